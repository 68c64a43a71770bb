"""Quality and rate measures on 8-bit RGB, and the Pillow baselines they are compared with."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (RGB, peak 255)."""
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def bpp(num_bytes: int, width: int, height: int) -> float:
    return 8 * num_bytes / (width * height)


def pillow_encode(image: np.ndarray, codec: str, quality: int) -> bytes:
    """JPEG (4:2:0, optimised Huffman) or WebP (method 6) through Pillow."""
    buf = io.BytesIO()
    img = Image.fromarray(image)
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=True)
    elif codec == "webp":
        img.save(buf, format="WEBP", quality=quality, method=6)
    elif codec == "avif":
        img.save(buf, format="AVIF", quality=quality, speed=6)
    else:
        raise ValueError(f"unknown baseline {codec!r}")
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
