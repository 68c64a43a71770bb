"""Images in and out through Pillow: any mode becomes 8-bit RGB for the network, and comes back in a mode
that matches the original.

- EXIF orientation is applied on input (the codec stores upright pixels; the output carries no rotation tag);
  EXIF that cannot be parsed is read as no orientation.
- Colour is coded as sRGB, the space the models were trained in and what an untagged output means to every
  viewer: RGB, RGBA, CMYK and gray images with an embedded ICC profile other than sRGB (a phone's Display P3, a
  camera's Adobe RGB, a print CMYK JPEG) are converted to sRGB through it on input (littlecms through Pillow's
  ImageCms, Pillow's default perceptual intent), as browsers display them; otherwise their pixel values would
  be taken as sRGB and come back with other colours. The output carries no profile. A profile that cannot be
  read is ignored, as browsers ignore it.
- Grayscale (L, 1, I;16, I, F) is replicated to RGB and returned as grayscale; float (F) images are read as
  0..1 when every value is within it, else as 0..255 levels.
- Animated and multi-page files (GIF, APNG, WebP, TIFF) opened from a path are refused: one picture per file,
  none dropped silently (a PIL image given directly is coded from its current frame, as Pillow's own
  conversions do). MPO (phone JPEGs: the picture plus a preview) is coded from its picture, a layered PSD from
  its flattened image (Pillow counts its layers as frames).
- 16-bit grayscale is coded at 8-bit precision (the network's) and written back as 16-bit (value * 257) to PNG,
  TIFF and PGM; other formats get its 8-bit values. Pillow opens 16-bit colour PNGs as 8-bit RGB, so those come
  back as 8-bit RGB; 16-bit gray + alpha PNGs, which Pillow opens as 8-bit RGBA, come back as 8-bit gray + alpha.
- Palette images are returned as RGB (or RGBA if the palette has transparency); one transparent colour in an
  RGB or gray image (PNG tRNS, gray of 1 to 16 bits) becomes an alpha plane (16-bit gray with one comes back as
  8-bit gray + alpha, the one such mode Pillow has; the codec coded 8 bits anyway). A 16-bit RGB PNG with one is
  refused: Pillow reads it at 8 bits, where the colour cannot be matched. 16-bit PGM (Pillow's mode I) is
  16-bit gray. These readings of a file's raw mode apply to files opened here (paths, standard input); a PIL
  image given directly is taken as Pillow opened it.
- Alpha is kept losslessly: the alpha plane travels zlib-compressed beside the lossy colour payload.
"""
from __future__ import annotations

import functools
import io
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from aectl.runtime.errors import AectlError, PixelLimitError, option
from aectl.runtime.files import broken_link
from aectl.runtime.outputs import atomic_write

_GRAY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_LOW_BIT_GRAY = {"L;2": 85, "L;4": 17}  # PNG raw modes Pillow expands to 0..255, by these factors
# zlib level of the PNGs `aectl decompress` writes, as OpenCV's imwrite defaults to: Pillow's own 6 took 92 ms per
# 768x512 reconstruction against 22 ms at 1, and its files were 8% smaller (benchmarks/README.md); decoded images
# are read back, the .aec file is what is kept.
PNG_COMPRESSION = 1


@dataclass
class Pixels:
    rgb: np.ndarray               # HxWx3 uint8
    alpha: np.ndarray | None      # HxW uint8, or None
    channels: int                 # original: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    bit_depth: int                # original: 8 or 16


_PILLOW_LIMIT_LOCK = threading.Lock()
HEIF_SUFFIXES = (".heic", ".heif")


def is_heif(path) -> bool:
    return Path(path).suffix.lower() in HEIF_SUFFIXES


@functools.lru_cache(maxsize=1)
def heif_support() -> bool:
    """Register pillow-heif's opener with Pillow once, when it is installed (`aectl[heif]`): phones save HEIC.
    Whether it is. Called for HEIC/HEIF files and streams only: the import costs 11-27 ms."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def open_image(path, max_pixels: int, name: str | None = None, limit_option: bool = True) -> Image.Image:
    """A loaded image file (a path, or a binary file object called `name` in messages) within `max_pixels`, or
    one AectlError. Pillow refuses more than twice its global
    MAX_IMAGE_PIXELS (179 Mpx by default; aectl's own limit is 268 Mpx), when opening and, for TIFF, GIF, WebP
    and MPO, again when loading; only then is the global raised to `max_pixels`, under a lock, for this open
    and load, and restored at once (switching it off around every open, unlocked, let two threads leave it off
    for the whole process). `limit_option`: whether a refusal for size says to raise `max_pixels` (train has
    no such option)."""
    source, path = path, path if name is None else name
    heif = heif_support() if name is not None or is_heif(path) else None  # a stream has no suffix to go by
    try:
        try:
            return _open_within(source, path, max_pixels, limit_option)
        except Image.DecompressionBombError:
            with _PILLOW_LIMIT_LOCK:
                pillow_limit = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = max(pillow_limit or 0, max_pixels)  # ours below then decides
                try:
                    return _open_within(source, path, max_pixels, limit_option)
                except Image.DecompressionBombError:  # past twice the raised limit: past ours too
                    raise PixelLimitError(f"{path}: the image exceeds the limit of {max_pixels} pixels",
                                          _raise_limit(limit_option)) from None
                finally:
                    Image.MAX_IMAGE_PIXELS = pillow_limit
    except AectlError:
        raise
    except Exception as exc:  # Pillow raises many exception types for unreadable files
        link = broken_link(Path(source)) if isinstance(source, (str, os.PathLike)) and source else None
        if link:  # (a dangling one said "no such file", a loop "cannot read image (Too many levels ...)")
            raise AectlError(f"{path}: {link}") from None
        if isinstance(exc, FileNotFoundError):
            raise AectlError(f"{path or repr(path)}: no such file") from None  # "" said ": no such file"
        if heif is False and is_heif(path):
            raise AectlError(f"{path}: reading HEIC/HEIF needs pillow-heif: pip install 'aectl[heif]'") from None
        detail = str(exc).replace(f"'{path}'", "").replace(str(path), "").replace(repr(source), "").strip()
        detail = detail.rstrip(":").strip()  # "[Errno 21] Is a directory:" once the path is taken out
        raise AectlError(f"{path}: cannot read image ({detail or type(exc).__name__})") from None


def _raise_limit(limit_option: bool) -> str:
    """The hint after a refusal for size, where the caller has a limit to raise (`train` has none)."""
    return f" (raise {option('max_pixels')} if you trust this file)" if limit_option else ""


def _open_within(source, path: str | Path, max_pixels: int, limit_option: bool) -> Image.Image:
    img = Image.open(source)
    try:
        return _checked_and_loaded(img, path, max_pixels, limit_option)
    except BaseException:
        if not hasattr(source, "read"):  # a refused path's file was left open; a caller's stream stays theirs
            img.close()                  # (standard input is opened again under a raised pixel limit)
        raise


def _checked_and_loaded(img: Image.Image, path: str | Path, max_pixels: int, limit_option: bool) -> Image.Image:
    if img.width * img.height > max_pixels:
        raise PixelLimitError(f"{path}: {img.width}x{img.height} exceeds the limit of {max_pixels} pixels",
                              _raise_limit(limit_option))
    frames = getattr(img, "n_frames", 1)
    # An MPO (phone JPEG) is a picture plus its preview or depth map; a PSD's frames are its layers, and it
    # opens as their flattened composite.
    if frames > 1 and img.format not in ("MPO", "PSD"):
        raise AectlError(f"{path}: {img.format} image of {frames} frames (animated or multi-page); aectl codes "
                         "one picture per file: extract the frame you want first")
    # What only the raw mode, known before loading, tells. Pillow has no 16-bit gray + alpha mode and opens such
    # PNGs as RGBA (8 bits), which came back RGBA. It expands 1-, 2- and 4-bit gray to 0..255 but leaves a tRNS
    # value in the file's scale, and it reads 16-bit RGB at 8 bits, where a tRNS colour cannot be matched: each
    # lost its transparency without a word.
    raw = img.tile[0][3] if img.format == "PNG" and img.tile else None
    transparent = img.info.get("transparency")
    if raw in _LOW_BIT_GRAY and isinstance(transparent, int) and transparent * _LOW_BIT_GRAY[raw] <= 255:
        img.info["transparency"] = transparent * _LOW_BIT_GRAY[raw]  # (a Pillow that scales it gives 0 or >= 17)
    if raw == "RGB;16B" and transparent is not None:
        raise AectlError(f"{path}: a 16-bit RGB PNG with a transparent colour (tRNS), which Pillow reads at 8 "
                         "bits, where that colour cannot be told apart: save it as RGBA first")
    img.load()
    return img.convert("LA") if raw == "LA;16B" and img.mode == "RGBA" else img


def to_pixels(img: Image.Image) -> Pixels:
    """Any Pillow image (its current frame) -> upright 8-bit RGB plus what is needed to restore its mode."""
    try:
        img.load()  # a lazily opened file fails here, not as a bare OSError inside numpy
    except Exception as exc:
        raise AectlError(f"cannot read image ({exc or type(exc).__name__})") from None
    pgm16 = img.mode == "I" and img.format == "PPM"  # Pillow reads 16-bit PGM as I, scaled to 0..65535
    try:
        img = ImageOps.exif_transpose(img)  # (a copy, without the file's format)
    except Exception:  # EXIF that cannot be parsed (a PNG eXIf chunk of garbage) says no orientation, as in JPEG
        pass
    mode = "I;16" if pgm16 else img.mode
    if mode in _GRAY_16 or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        gray, is16 = _gray_levels(values, mode)
        if img.info.get("icc_profile"):  # coded at 8 bits anyway: its 8-bit levels go through the profile
            levels = Image.fromarray(gray)
            levels.info["icc_profile"] = img.info["icc_profile"]
            gray = np.asarray(_as_srgb(levels))
        transparent = img.info.get("transparency")
        if transparent is not None and mode != "F":  # PNG tRNS on 16-bit gray: Pillow has no 16-bit gray + alpha
            alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
            return Pixels(np.repeat(gray[:, :, None], 3, axis=2), alpha, 2, 8)
        return Pixels(np.repeat(gray[:, :, None], 3, axis=2), None, 1, 16 if is16 else 8)
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
        mode = img.mode
    elif mode in ("1", "L", "RGB") and img.info.get("transparency") is not None:  # one colour transparent (tRNS)
        img = img.convert("LA" if mode != "RGB" else "RGBA")
        mode = img.mode
    if img.info.get("icc_profile") and mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        img = _as_srgb(img)
        mode = img.mode
    if mode in ("1", "L"):
        gray = np.asarray(img.convert("L"))
        return Pixels(np.repeat(gray[:, :, None], 3, axis=2), None, 1, 8)
    if mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"))
        return Pixels(np.repeat(la[:, :, :1], 3, axis=2), np.ascontiguousarray(la[:, :, 1]), 2, 8)
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"))
        return Pixels(np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3]), 4, 8)
    try:
        rgb = np.asarray(img.convert("RGB"))
    except MemoryError:
        raise
    except Exception as exc:
        raise AectlError(f"cannot convert image mode {mode} to RGB ({exc})") from None
    return Pixels(rgb, None, 3, 8)


def _as_srgb(img: Image.Image) -> Image.Image:
    """`img` (RGB, RGBA, CMYK, L or LA with an ICC profile) in sRGB: RGB or RGBA, or L or LA for gray, which
    sRGB's curve carries as the sRGB gray viewers assume for untagged gray images."""
    transform = _srgb_transform(bytes(img.info["icc_profile"]), "L" if img.mode == "LA" else img.mode)
    if transform is None:
        return img
    if img.mode in ("L", "LA"):
        gray = transform.apply(img.getchannel("L")).getchannel("G")  # R = G = B for a neutral input
        return Image.merge("LA", (gray, img.getchannel("A"))) if img.mode == "LA" else gray
    return transform.apply(img)


@functools.lru_cache(maxsize=8)
def _srgb_transform(icc: bytes, mode: str):
    """A littlecms transform from the profile to sRGB, built once per profile (a batch of one phone's photos
    shares it, from any thread); None where it would change nothing (sRGB profiles, whatever their name), for
    profiles that cannot be read or whose colour space is not the image's (as browsers treat them), and when
    Pillow was built without littlecms."""
    try:
        from PIL import ImageCms
    except ImportError:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # NOCACHE: littlecms's one-pixel cache is written by every call, and codecs run in several threads.
        transform = ImageCms.buildTransform(source, _srgb_profile(), mode, "RGBA" if mode == "RGBA" else "RGB",
                                            flags=ImageCms.Flags.NOCACHE)
        probe = _probe_colours(mode)
        if np.abs(np.asarray(transform.apply(probe), dtype=np.int16)[..., :3]
                  - np.asarray(probe.convert("RGB"), dtype=np.int16)).max() <= 1:
            return None  # an sRGB profile (v2, v4, a camera's copy): the values stay exactly as they are
        return transform
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _probe_colours(mode: str) -> Image.Image:
    """Colours that tell an sRGB profile from any other by what it does to them, not by its name ("Linear
    sRGB" is not sRGB): a 6-step cube of RGB values, in the image's mode (a gray ramp for L)."""
    steps = np.linspace(0, 255, 6).round().astype(np.uint8)
    if mode == "L":
        return Image.fromarray(steps[None, :])
    cube = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(1, -1, 3)
    return Image.fromarray(cube).convert(mode)


@functools.lru_cache(maxsize=1)
def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _gray_levels(values: np.ndarray, mode: str) -> tuple[np.ndarray, bool]:
    """8-bit levels of a 16-bit, 32-bit integer or float grayscale image, and whether to write it back as 16-bit.
    Integers up to 255 are 8-bit and up to 65535 16-bit; floats within 0..1 are scaled by 255, as image tools
    store them (skimage, OpenCV; Pillow's clipping turned them black), and floats within 0..255 are levels.
    Anything else (negative, NaN, 32-bit integers over 65535) would be clipped: refused."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 255):
            raise AectlError(f"float image with values from {low:g} to {high:g}: aectl reads floats within "
                             "0..1 or 0..255; scale it first")
        scaled = values * 255 if high <= 1 else values
        return np.rint(scaled).astype(np.uint8), False
    if low < 0 or high > 65535:
        raise AectlError(f"32-bit integer image with values from {low:g} to {high:g}: aectl reads 8- and 16-bit "
                         "levels (0..65535); scale it first")
    is16 = mode != "I" or high > 255
    return np.rint(values / 257 if is16 else values).astype(np.uint8), is16


def read_rgb(path: str | Path, max_pixels: int) -> np.ndarray:
    """The upright 8-bit RGB the codec compresses from an image file: what its rate and quality are measured
    against (Pillow's plain convert("RGB") keeps EXIF rotation out and clips 16-bit values to white). Its
    callers, eval and bench, have no --max-pixels, so a refusal for size does not suggest raising it."""
    with open_image(path, max_pixels, limit_option=False) as image:
        return to_pixels(image).rgb


def array_to_pixels(array: np.ndarray) -> Pixels:
    """A uint8 numpy array as Pillow's fromarray reads it: HxW or HxWx1 gray, HxWx2 gray + alpha, HxWx3 RGB,
    HxWx4 RGBA (what np.asarray gives of an L, LA, RGB or RGBA image) -> Pixels."""
    array = np.asarray(array)  # an np.matrix cannot be 3-D: numpy aborted the process in repeat()
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise AectlError(f"expected an HxW, or HxWxC with C from 1 to 4, uint8 array; got {array.dtype} "
                         f"{array.shape}")
    channels = 1 if array.ndim == 2 else array.shape[2]
    alpha = np.ascontiguousarray(array[:, :, -1]) if channels in (2, 4) else None
    if channels <= 2:
        gray = array if array.ndim == 2 else array[:, :, 0]
        return Pixels(np.repeat(gray[:, :, None], 3, axis=2), alpha, channels, 8)
    return Pixels(np.ascontiguousarray(array[:, :, :3]), alpha, channels, 8)


def from_pixels(rgb: np.ndarray, alpha: np.ndarray | None, channels: int, bit_depth: int) -> Image.Image:
    """Decoded RGB (+ alpha) -> a Pillow image in the original's mode family."""
    if channels in (1, 2):
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        if bit_depth == 16:
            return Image.fromarray(gray.astype(np.uint16) * 257)
        if channels == 2:
            return Image.fromarray(np.stack([gray, alpha], axis=2))
        return Image.fromarray(gray)
    if channels == 4:
        return Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2))
    return Image.fromarray(rgb)


SIXTEEN_BIT_FORMATS = ("PNG", "TIFF", "PPM")  # Pillow writers that keep 16-bit grayscale (PPM: as 16-bit PGM)
# Pillow writers that keep an 8-bit alpha plane (RGBA, and LA where the format takes it; PDF as a JPEG 2000 image
# with its mask). aectl codes alpha losslessly, so the other writers refuse an image with alpha: JPEG did already,
# while BMP and PPM wrote it as RGB without a word. GIF holds on/off transparency only: an RGBA image whose alpha
# is all 0 or 255 (a transparent GIF's, coded and decoded) is written, any other alpha and LA at all (Pillow drops
# it) are refused.
ALPHA_FORMATS = ("PNG", "TIFF", "WEBP", "AVIF", "JPEG2000", "TGA", "SGI", "QOI", "DDS", "IM", "ICO", "PDF")
# Pillow writers that resample the image to fixed icon sizes: a 320x200 image came back 1024x1024 from ICNS.
RESAMPLING_FORMATS = ("ICNS",)
ICO_MAX_SIDE = 256  # ICO's own limit; Pillow shrank larger images to its default icon sizes (320x200 to 128x80)


def image_for_format(image: Image.Image, fmt: str) -> Image.Image:
    """16-bit grayscale as 8 bits for formats without 16-bit gray (Pillow wrote WebP, AVIF and GIF all white):
    the codec coded it at 8-bit precision, so value // 257 loses nothing."""
    if image.mode in _GRAY_16 and fmt not in SIXTEEN_BIT_FORMATS:
        return Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8))
    return image


def writer_refusal(fmt: str) -> str | None:
    """Why Pillow cannot write `fmt` at all here, or None: it reads PSD only, BUFR/GRIB/HDF5/WMF need a save
    handler Pillow does not ship, MSP/XBM/PALM take 1-bit images only, and ICNS resamples. Asked of Pillow itself
    (a 1x1 RGB and gray image), so that a format is refused before any work instead of failing once per file."""
    if fmt not in Image.SAVE:
        return "Pillow reads that format but cannot write it"
    if fmt in RESAMPLING_FORMATS:
        return f"{fmt} holds icons of fixed square sizes, so Pillow would resample the image"
    reason = ""
    for mode in ("RGB", "L"):
        try:
            Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
            return None
        except Exception as exc:  # OSError, ValueError, KeyError: Pillow's words differ per writer
            reason = str(exc)
    return f"Pillow cannot write RGB or gray images as {fmt} ({reason})"


def _on_off_gif(image: Image.Image, fmt: str) -> bool:
    """Whether GIF holds this image's alpha as it is: RGBA with every alpha value 0 or 255."""
    if fmt != "GIF" or image.mode != "RGBA":
        return False
    alpha = np.asarray(image.getchannel("A"))
    return bool(((alpha == 0) | (alpha == 255)).all())


def _save(image: Image.Image, fh, fmt: str, path: Path, options: dict | None) -> None:
    """Pillow's save, refusing in one line what it would write as a different image (alpha dropped, resized)."""
    if image.mode in ("RGBA", "LA") and fmt not in ALPHA_FORMATS and not _on_off_gif(image, fmt):
        raise AectlError(f"{path}: {fmt} cannot hold this image's alpha channel; write PNG, TIFF or WebP")
    if fmt in RESAMPLING_FORMATS:
        raise AectlError(f"{path}: {writer_refusal(fmt)}")
    if fmt == "ICO":
        if max(image.size) > ICO_MAX_SIDE:
            raise AectlError(f"{path}: ICO holds images up to {ICO_MAX_SIDE}x{ICO_MAX_SIDE}, this one is "
                             f"{image.width}x{image.height}")
        options = {"sizes": [image.size], **(options or {})}
    try:
        image.save(fh, format=fmt, **(options or {}))
    except (ValueError, KeyError, TypeError) as exc:  # Pillow's "unsupported mode" and kin: this file fails
        raise AectlError(f"{path}: Pillow cannot write a {image.mode} image as {fmt} ({exc})") from None


def pack_alpha(alpha: np.ndarray | None) -> bytes:
    return zlib.compress(alpha.tobytes(), 9) if alpha is not None else b""


def unpack_alpha(data: bytes, height: int, width: int) -> np.ndarray:
    """Inflate with an output cap, so a crafted plane cannot expand past the image size."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, height * width + 1)
    except zlib.error as exc:
        raise AectlError(f"corrupted alpha plane ({exc})") from None
    if len(raw) != height * width or not inflater.eof or inflater.unused_data:
        raise AectlError("corrupted alpha plane (wrong size)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width)


def encode_image(image: Image.Image, suffix: str, save_options: dict | None = None) -> bytes:
    """An image as the bytes of a file with `suffix` (for standard output, where there is no file to name)."""
    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None:
        raise AectlError(f"unknown image format for extension {suffix!r}")
    buffer = io.BytesIO()
    _save(image_for_format(image, fmt), buffer, fmt, Path("stdout"), save_options)
    return buffer.getvalue()


def write_image(path: str | Path, image: Image.Image, force: bool = False, save_options: dict | None = None) -> None:
    """Save `image` in the format its suffix names, atomically (outputs.atomic_write). `save_options` go to
    Pillow's `Image.save` (compress_level for PNG, say)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise AectlError(f"{path}: unknown image format for extension {path.suffix!r}")
    atomic_write(path, lambda fh: _save(image_for_format(image, fmt), fh, fmt, path, save_options), force=force)
