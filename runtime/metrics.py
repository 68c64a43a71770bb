"""Quality and rate measures on 8-bit RGB, and the Pillow baselines they are compared with."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from aectl.runtime.errors import AectlError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (RGB, peak 255)."""
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def bpp(num_bytes: int, width: int, height: int) -> float:
    return 8 * num_bytes / (width * height)


# Pillow's save options per baseline, besides the quality.
BASELINE_OPTIONS = {"jpeg": {"format": "JPEG", "subsampling": "4:2:0", "optimize": True},
                    "webp": {"format": "WEBP", "method": 6}, "avif": {"format": "AVIF", "speed": 6}}


# The formats' own side limits, found before measuring: libjpeg's JPEG_MAX_DIMENSION; a WebP side is 14 bits;
# libavif reads back no side over 32768 by default (Pillow wrote a wider AVIF, then could not open it).
BASELINE_MAX_SIDE = {"jpeg": 65500, "webp": 16383, "avif": 32768}


def check_baseline_sizes(codec: str, images: list[tuple[str, np.ndarray]]) -> None:
    """Refuse, before any measuring, an image the baseline `codec` cannot code: eval and bench found it while
    coding, after minutes of measuring, and kept nothing of them."""
    limit = BASELINE_MAX_SIDE.get(codec)
    for name, image in images:
        h, w = image.shape[:2]
        if limit is not None and max(h, w) > limit:
            raise AectlError(f"{name} is {w}x{h}: {codec} codes sides of at most {limit} pixels; leave {codec} "
                             "out of the baselines for it")


def pillow_encode(image: np.ndarray, codec: str, quality: int) -> bytes:
    """JPEG (4:2:0, optimised Huffman) or WebP (method 6) through Pillow."""
    if codec not in BASELINE_OPTIONS:
        raise ValueError(f"unknown baseline {codec!r}")
    buf = io.BytesIO()
    img = Image.fromarray(image)
    try:
        img.save(buf, quality=quality, **BASELINE_OPTIONS[codec])
    except (ValueError, OSError, RuntimeError) as exc:  # a limit of the format's: the image's fault, not a bug
        raise AectlError(f"{codec} cannot code this {img.width}x{img.height} image ({exc})") from None
    return buf.getvalue()


def baseline_at_bpp(image: np.ndarray, codec: str, target_bpp: float) -> dict:
    """The quality setting whose file comes closest to target_bpp (bisection over 1..95), with its PSNR."""
    h, w = image.shape[:2]
    lo, hi, best = 1, 95, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = pillow_encode(image, codec, q)
        rate = bpp(len(data), w, h)
        if best is None or abs(rate - target_bpp) < abs(best[1] - target_bpp):
            best = (q, rate, data)
        lo, hi = (q + 1, hi) if rate < target_bpp else (lo, q - 1)
    q, rate, data = best
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return {"codec": codec, "quality": q, "bpp": rate, "psnr": psnr(image, decoded)}


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = 11 * 2 ** (len(MS_SSIM_WEIGHTS) - 1)  # the 11x11 window at the coarsest of five scales


def _gaussian_valid(x: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, 'valid' region only (no padding)."""
    k = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    k /= k.sum()
    h, w = x.shape[-2] - size + 1, x.shape[-1] - size + 1
    rows = sum(k[i] * x[..., i:i + h, :] for i in range(size))
    return sum(k[i] * rows[..., :, i:i + w] for i in range(size))


def _ssim_terms(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term (float64 images in [0, 255])."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gaussian_valid(a), _gaussian_valid(b)
    var_a = _gaussian_valid(a * a) - mu_a**2
    var_b = _gaussian_valid(b * b) - mu_b**2
    cov = _gaussian_valid(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    ssim = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs
    return ssim.mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 RGB images (Wang, Simoncelli and Bovik 2003: five scales, 11x11 Gaussian
    window with sigma 1.5, the paper's scale weights), computed per channel and averaged, as learned-codec
    papers report it. Images need at least 11 * 2**4 = 176 pixels on their shorter side."""
    x = np.asarray(a, dtype=np.float64).transpose(2, 0, 1)
    y = np.asarray(b, dtype=np.float64).transpose(2, 0, 1)
    if min(x.shape[1:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} pixels a side, "
                         f"got {x.shape[2]}x{x.shape[1]}")
    values = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_terms(x, y)
        values.append(np.maximum(ssim if level == len(MS_SSIM_WEIGHTS) - 1 else cs, 0))
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :h, :w].reshape(3, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        y = y[:, :h, :w].reshape(3, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    per_channel = np.prod([v ** wt for v, wt in zip(values, MS_SSIM_WEIGHTS)], axis=0)
    return float(per_channel.mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, -10 log10(1 - MS-SSIM), so curves near 1 can be told apart."""
    return float("inf") if value >= 1 else float(-10 * np.log10(1 - value))
