"""Training images: a folder of any Pillow-readable files, or STL10 through torchvision.

Samples are random crops of the preset's size with random flips, drawn from a seeded numpy Generator whose
state is saved in checkpoints, so a resumed run sees exactly the batches an uninterrupted run would have.
A deterministic held-out split (every k-th file) gives the validation crops reported each epoch.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from PIL import Image

from aectl.runtime.container import DEFAULT_MAX_PIXELS
from aectl.runtime.errors import AectlError
from aectl.runtime.files import IMAGE_SUFFIXES, walk_folder
from aectl.runtime.image_io import open_image, to_pixels


STL10_SIDE = 96  # STL10's images are 96x96: no crop larger than that fits in them


def find_images(root: Path) -> list[Path]:
    """All image files under root, recursively, in a stable order, as a data set's walk finds them
    (runtime/files.py): hidden files and folders passed over, a symlink that leads nowhere included, to fail as
    that file."""
    return walk_folder(root, IMAGE_SUFFIXES, skip_hidden=True).found


def find_photos(root: Path, where: str, hint: str = "") -> list[Path]:
    """find_images for a folder of real photos a command reads (export's --calibration, verify's --images): a
    subfolder that cannot be read is refused, named, as train refuses it (passed over, export calibrated and
    fitted on the photos it could read without a word). `where` names the folder's source in the error."""
    walk = walk_folder(root, IMAGE_SUFFIXES, skip_hidden=True)
    if walk.unreadable:
        (folder, why), more = walk.unreadable[0], len(walk.unreadable) - 1
        raise AectlError(f"{where} {root}: cannot read folder {folder}: {why}"
                         f"{f' (and {more} more)' if more else ''}{hint}")
    return walk.found


def load_rgb(path: Path, min_side: int) -> np.ndarray:
    """HWC uint8 RGB as the codec reads it (the codec's opener: one frame only, within its pixel limit; EXIF
    orientation applied, colour in sRGB, 16-bit gray scaled), upscaled if a side is shorter than min_side.
    (An animated GIF trained on its first frame, which the codec refuses.)"""
    with open_image(path, DEFAULT_MAX_PIXELS, limit_option=False) as img:  # train has no --max-pixels
        try:
            img = Image.fromarray(to_pixels(img).rgb)
        except AectlError as exc:  # a mode or range the codec refuses, said in its own words
            raise AectlError(f"{path}: {exc}") from None
    if min(img.size) < min_side:
        scale = min_side / min(img.size)
        size = max(min_side, round(img.width * scale)), max(min_side, round(img.height * scale))
        if size[0] * size[1] > DEFAULT_MAX_PIXELS:  # a 1x100000 strip became 256x25600000: 23 GB, then MemoryError
            raise AectlError(f"{path}: {img.width}x{img.height} would be upscaled to {size[0]}x{size[1]} for "
                             f"{min_side}x{min_side} crops, past the {DEFAULT_MAX_PIXELS} pixel limit; crop or "
                             "remove this image")
        img = img.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class CropSampler:
    """Random crops with flips from a list of HWC uint8 images."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int):
        self.images = images
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    @property
    def total_pixels(self) -> int:
        """The pixels of all training images: an epoch draws that many in crops."""
        return sum(img.shape[0] * img.shape[1] for img in self.images)

    def batch(self, size: int) -> np.ndarray:
        """(size, 3, crop, crop) float32 in [0, 1]."""
        out = np.empty((size, 3, self.crop, self.crop), dtype=np.float32)
        for i in range(size):
            img = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(img.shape[0] - self.crop + 1)
            left = self.rng.integers(img.shape[1] - self.crop + 1)
            patch = img[top:top + self.crop, left:left + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch.transpose(2, 0, 1) / 255.0
        return out

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def center_crops(images: list[np.ndarray], crop: int) -> np.ndarray:
    """Deterministic validation crops: the centre crop of each image, (N, 3, crop, crop) float32."""
    out = []
    for img in images:
        top, left = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
        out.append(img[top:top + crop, left:left + crop].transpose(2, 0, 1) / 255.0)
    return np.stack(out).astype(np.float32)


def split_holdout(items: list, fraction: float = 0.1) -> tuple[list, list]:
    """Every k-th item (k = 1/fraction) is held out for validation; at least one when there are two or more."""
    if len(items) < 2:
        return items, items
    k = max(2, round(1 / fraction))
    val = items[k - 1::k] or items[-1:]
    train = [x for x in items if not any(x is v for v in val)]
    return train, val


def load_folder(root: Path, crop: int, log=None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The training and validation images of a folder, every one held in memory (3 bytes a pixel). Every file
    that cannot be used, and every subfolder that cannot be read (rglob passed over them without a word), is
    named at once: the first three in the error, the rest through `log` before it."""
    if not root.is_dir():
        raise AectlError(f"--data {root}: not a directory (give a folder of images, or 'stl10' with --data-root)")
    paths, unreadable, hidden = walk_folder(root, IMAGE_SUFFIXES, skip_hidden=True)
    if hidden and log:  # passed over as the shell's * passes them over; said, since a data set lost them
        log(f"note: --data {root}: passed over {len(hidden)} hidden name{'s' * (len(hidden) != 1)} (starting "
            f"with a dot), such as {hidden[0]}")
    unusable = [f"{folder}: cannot read folder: {why}" for folder, why in unreadable]
    if not paths and not unusable:
        raise AectlError(f"--data {root}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    train_paths, val_paths = split_holdout(paths)
    loaded = {}
    for path in dict.fromkeys(train_paths + val_paths):  # every file that cannot be used is named at once
        try:
            loaded[path] = load_rgb(path, crop)
        except AectlError as exc:
            unusable.append(str(exc))
        except MemoryError:  # (it was "cannot convert image mode RGB to RGB ()", blamed on the file)
            raise AectlError(f"--data {root}: out of memory loading {path}: the training images are held in "
                             "memory, 3 bytes a pixel; train on fewer or smaller photos") from None
    if len(unusable) == 1:
        raise AectlError(unusable[0])
    if unusable:  # one run per bad file found them one by one
        for rest in unusable[3:] if log else []:
            log(f"note: --data {root}: also cannot be used: {rest}")
        more = f"; and {len(unusable) - 3} more{' (above)' if log else ''}" if len(unusable) > 3 else ""
        raise AectlError(f"--data {root}: {len(unusable)} files cannot be used: {'; '.join(unusable[:3])}{more}")
    train = [loaded[p] for p in train_paths]
    val = train if val_paths is train_paths else [loaded[p] for p in val_paths]  # one image: both
    return train, val, [str(p) for p in val_paths]


def validation_copies(train: list[np.ndarray], val: list[np.ndarray], val_names: list[str]) -> list[str]:
    """The validation images whose pixels are also a training image's (a photo copied under another name): their
    figures measure training fit, not generalisation, and nothing said so."""
    def digest(image: np.ndarray) -> bytes:
        pixels = np.ascontiguousarray(image)
        return hashlib.blake2b(pixels.data, digest_size=16).digest() + str(pixels.shape).encode()

    trained = {digest(image) for image in train}
    return [name for name, image in zip(val_names, val) if digest(image) in trained]


def folder_digest(root: Path) -> str:
    """What a folder of training images holds, by relative name and size: a resumed run compares it with the
    one it started from (photos added or removed change the batches and the validation image)."""
    listing = "\n".join(f"{p.relative_to(root).as_posix()} {p.stat().st_size}" for p in find_images(root))
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()  # names as the OS gave them


def load_stl10(root: Path | None, crop: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """STL10's unlabeled split (100k 96x96 images) through torchvision, never downloaded here."""
    try:
        from torchvision.datasets import STL10  # optional: the CPU torch here has no matching torchvision
    except Exception:
        raise AectlError("--data stl10 needs torchvision, which does not import here: install a torchvision "
                         "matching your torch (pip install torchvision), or pass a folder of images to --data") from None
    if root is None:
        raise AectlError("--data stl10 needs --data-root DIR, the folder holding stl10_binary/")
    try:
        dataset = STL10(str(root), split="unlabeled", download=False)
    except Exception:
        raise AectlError(f"STL10 not found under {root}: put the extracted stl10_binary/ folder there "
                         "(from https://cs.stanford.edu/~acoates/stl10/)") from None
    images = list(dataset.data.transpose(0, 2, 3, 1))
    cut = max(1, math.ceil(len(images) * 0.05))
    return images[:-cut], images[-cut:], [f"stl10 unlabeled[{len(images) - cut}:]"]
