"""Rate-distortion evaluation of bundles against the codecs people use today (JPEG, WebP, AVIF via Pillow).

Every rate is a real file size: .aec files for our models, Pillow's encoded bytes for the baselines, all coded
from the same 8-bit RGB pixels (a gray image as three equal channels, alpha left out, as for the baselines and in
CompressAI's evaluations), so a gray or RGBA photo's figures are not those of its `compress` file. Quality is
PSNR on 8-bit RGB and MS-SSIM. Bundles whose folder names differ only in a trailing `-qN` form one curve (one
point per quality); each baseline is swept over its quality settings. BD-rates compare each model curve with
each baseline over the quality range they share, using the baseline points that bracket the model's rates.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from aectl.runtime.bdrate import bd_rate, quality_at_rate
from aectl.runtime.container import DEFAULT_MAX_PIXELS
from aectl.runtime.errors import AectlError, option
from aectl.runtime.files import IMAGE_SUFFIXES, files_in
from aectl.runtime.image_io import read_rgb
from aectl.runtime.metrics import (MS_SSIM_MIN_SIDE, bpp, check_baseline_sizes, ms_ssim, ms_ssim_db,
                                   pillow_encode, psnr)
from aectl.runtime.registry import manifest_quality

BASELINE_SETTINGS = {
    "jpeg": (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90),
    "webp": (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
    "avif": (5, 10, 20, 30, 40, 50, 60, 70, 80),
}
PER_IMAGE_FIELDS = ("codec", "setting", "image", "bytes", "bpp", "psnr", "ms_ssim")


@dataclass
class Measured:
    codec: str     # curve name: a model family or a baseline
    setting: str   # quality within the curve: "q4", or a baseline's quality setting
    image: str
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in PER_IMAGE_FIELDS}


def curve_name(bundle: Path) -> str:
    return re.sub(r"-q\d+$", "", bundle.resolve().name)


def load_images(data: Path) -> list[tuple[str, np.ndarray]]:
    if not data.is_dir():  # a missing folder or a file said "no images found"
        raise AectlError(f"{option('data', str(data))}: not a folder")
    paths = files_in(data, IMAGE_SUFFIXES)
    if not paths:
        raise AectlError(f"{option('data', str(data))}: no images found")
    return [(p.name, read_rgb(p, DEFAULT_MAX_PIXELS)) for p in paths]


def _measure(codec: str, setting: str, name: str, image: np.ndarray, blob: bytes, decoded: np.ndarray) -> Measured:
    h, w = image.shape[:2]
    return Measured(codec, setting, name, len(blob), bpp(len(blob), w, h), psnr(image, decoded),
                    ms_ssim(image, decoded))


def open_codec(bundle: Path, provider: str = "cpu", threads: int | None = None):
    """A bundle's codec, refused in one line if it cannot compress (a decoder-only bundle)."""
    from aectl.runtime.codec import Codec

    codec = Codec(bundle, provider=provider, threads=threads)
    if not codec.bundle.has_encoder:
        raise AectlError(f"bundle {bundle} is decoder-only (no encoder.onnx): eval needs the full bundle")
    return codec


def model_point(bundle: Path, codec) -> tuple[str, str]:
    """The (curve, setting) a bundle's rows are averaged under: its folder's name less `-qN`, and its quality."""
    quality = manifest_quality(codec.bundle.manifest)
    return curve_name(bundle), f"q{quality}" if quality is not None else bundle.name


def _check_points(bundles: list[Path], codecs: list) -> None:
    """Two models on one point were averaged into it without a word, and a model in a folder named `jpeg` joined
    the JPEG curve (`jpeg vs jpeg: BD-rate +0.0%`)."""
    seen: dict[tuple[str, str], Path] = {}
    for bundle, codec in zip(bundles, codecs):
        curve, setting = point = model_point(bundle, codec)
        if curve in BASELINE_SETTINGS:
            raise AectlError(f"-m {bundle}: its curve would be named {curve!r}, as a baseline's is (curves are "
                             "named by folder); rename the folder")
        if point in seen:
            raise AectlError(f"-m {seen[point]} and -m {bundle} would both be point {setting} of curve {curve!r} "
                             "(curves are named by folder); rename one of the folders")
        seen[point] = bundle


def measure_bundle(bundle: Path, codec, images) -> list[Measured]:
    curve, setting = model_point(bundle, codec)
    rows = []
    for name, image in images:
        blob = codec.compress(image)
        rows.append(_measure(curve, setting, name, image, blob, np.asarray(codec.decompress(blob).convert("RGB"))))
    return rows


def measure_baseline(codec: str, images, settings=None) -> list[Measured]:
    if codec not in BASELINE_SETTINGS:
        raise AectlError(f"unknown baseline {codec!r}; choose from {', '.join(BASELINE_SETTINGS)}")
    rows = []
    for q in settings or BASELINE_SETTINGS[codec]:
        for name, image in images:
            blob = pillow_encode(image, codec, q)
            decoded = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
            rows.append(_measure(codec, str(q), name, image, blob, decoded))
    return rows


def curves(rows: list[Measured]) -> dict[str, list[dict]]:
    """Per curve, one point per setting: the mean over images of bpp, PSNR and MS-SSIM, sorted by rate."""
    grouped: dict[tuple[str, str], list[Measured]] = {}
    for r in rows:
        grouped.setdefault((r.codec, r.setting), []).append(r)
    out: dict[str, list[dict]] = {}
    for (codec, setting), group in grouped.items():
        mean_ssim = float(np.mean([r.ms_ssim for r in group]))
        out.setdefault(codec, []).append({
            "setting": setting, "images": len(group), "bpp": float(np.mean([r.bpp for r in group])),
            "psnr": float(np.mean([r.psnr for r in group])), "ms_ssim": mean_ssim, "ms_ssim_db": ms_ssim_db(mean_ssim)})
    return {codec: sorted(points, key=lambda p: p["bpp"]) for codec, points in out.items()}


def _bracketing(points: list[dict], low: float, high: float) -> list[dict]:
    """The baseline points inside [low, high] bpp plus the nearest one beyond each end."""
    inside = [i for i, p in enumerate(points) if low <= p["bpp"] <= high]
    below = [i for i, p in enumerate(points) if p["bpp"] < low]
    above = [i for i, p in enumerate(points) if p["bpp"] > high]
    keep = inside + ([below[-1]] if below else []) + ([above[0]] if above else [])
    return [points[i] for i in sorted(keep)]


def compare(model: list[dict], baseline: list[dict]) -> dict:
    """BD-rate (PSNR and MS-SSIM dB) of a model curve against a baseline curve, and the PSNR gain at each
    model point (baseline interpolated at the same bpp)."""
    ref = _bracketing(baseline, model[0]["bpp"], model[-1]["bpp"])
    result: dict = {"baseline_points": [p["setting"] for p in ref]}
    for key, metric in (("bd_rate_psnr", "psnr"), ("bd_rate_ms_ssim", "ms_ssim_db")):
        try:
            if len(model) >= 4 and len(ref) < 4 <= len(baseline):  # bd_rate said "each curve needs four points"
                raise ValueError(f"only {len(ref)} of the baseline's {len(baseline)} points "
                                 f"{'lies' if len(ref) == 1 else 'lie'} at or next to the model's rates "
                                 f"({model[0]['bpp']:.3f}-{model[-1]['bpp']:.3f} bpp); it needs four")
            result[key] = bd_rate([p["bpp"] for p in ref], [p[metric] for p in ref],
                                  [p["bpp"] for p in model], [p[metric] for p in model])
        except ValueError as exc:
            result[key] = None
            result[f"{key}_why"] = str(exc)
    gains = []
    for p in model:
        at = quality_at_rate(p["bpp"], [b["bpp"] for b in baseline], [b["psnr"] for b in baseline])
        gains.append({"setting": p["setting"], "bpp": p["bpp"],
                      "psnr_gain": None if at is None else p["psnr"] - at})
    result["psnr_gain_at_model_points"] = gains
    return result


def evaluate(bundles: list[Path], data: Path, baselines: list[str], provider: str = "cpu",
             threads: int | None = None, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Measure every bundle and baseline on every image in `data`; return per-image rows, curves, BD-rates."""
    unknown = [b for b in baselines if b not in BASELINE_SETTINGS]
    if unknown:
        raise AectlError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINE_SETTINGS)}")
    # Each once: `jpeg,jpeg` or one bundle named twice measured every image twice and counted it twice.
    baselines = list(dict.fromkeys(baselines))
    unique: dict[Path, Path] = {}
    for bundle in bundles:
        unique.setdefault(Path(bundle).resolve(), Path(bundle))
    bundles = list(unique.values())
    codecs = [open_codec(bundle, provider, threads) for bundle in bundles]  # a bad bundle fails before any work
    _check_points(bundles, codecs)
    images = load_images(data)
    for name, image in images:  # named before any codec runs, not as a bare ValueError after the first model
        if min(image.shape[:2]) < MS_SSIM_MIN_SIDE:
            raise AectlError(f"{option('data', str(data))}: {name} is {image.shape[1]}x{image.shape[0]}; "
                             f"MS-SSIM needs at least {MS_SSIM_MIN_SIDE} pixels a side")
    for codec in baselines:
        check_baseline_sizes(codec, [(f"{option('data', str(data))}: {name}", image) for name, image in images])
    rows: list[Measured] = []
    for bundle, codec in zip(bundles, codecs):
        progress(f"model {bundle}")
        rows += measure_bundle(bundle, codec, images)
    for codec in baselines:
        progress(f"baseline {codec}")
        rows += measure_baseline(codec, images)
    all_curves = curves(rows)
    models = sorted({curve_name(b) for b in bundles})
    comparisons = {m: {b: compare(all_curves[m], all_curves[b]) for b in baselines} for m in models}
    ran_on = sorted({name for codec in codecs for name in codec.network.providers})  # `auto` says what it chose
    return {"data": str(data), "images": len(images), "provider": provider, "session_providers": ran_on,
            "models": models, "baselines": baselines, "curves": all_curves, "comparisons": comparisons,
            "per_image": [r.to_dict() for r in rows]}
