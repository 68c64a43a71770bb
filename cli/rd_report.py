"""Files `aectl eval` writes: results.json, per_image.csv, curves.csv and rd.png (PSNR and MS-SSIM panels)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from aectl.cli.json_out import json_text
from aectl.runtime.errors import AectlError
from aectl.runtime.evaluate import PER_IMAGE_FIELDS
from aectl.runtime.outputs import atomic_write_files, check_output_file

CURVE_FIELDS = ("codec", "setting", "images", "bpp", "psnr", "ms_ssim", "ms_ssim_db")
OUTPUTS = ("results.json", "per_image.csv", "curves.csv", "rd.png")
DEFAULT_RIGHT_BPP = 1.6  # where learned-codec papers' Kodak plots end


def _csv(rows: list[dict], fields) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def plot_view(result: dict, metric: str) -> tuple[float, float | None, float | None]:
    """(right edge in bpp, lowest and highest value to show) of one panel: every model point is in view, up to
    at least 1.6 bpp, and the quality axis fits the finite points of that range, so a baseline's 3 bpp points
    neither stretch it nor hide a model's."""
    model_rates = [p["bpp"] for c, points in result["curves"].items() if c in result["models"] for p in points]
    right = max([DEFAULT_RIGHT_BPP] + [1.08 * r for r in model_rates])
    shown = [p[metric] for points in result["curves"].values() for p in points
             if p["bpp"] <= right and p[metric] is not None and math.isfinite(p[metric])]
    if not shown:
        return right, None, None
    pad = max(0.5, 0.05 * (max(shown) - min(shown)))
    return right, min(shown) - pad, max(shown) + pad


def pyplot():
    """matplotlib's pyplot on its file backend; eval asks for it before measuring, so a missing extra is said
    before minutes of work rather than after."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AectlError("the RD plot needs matplotlib: pip install 'aectl[eval]'") from None
    return plt


def rd_plot(result: dict, title: str = "") -> bytes:
    """Rate-distortion curves as a PNG: our models as solid lines with markers, baselines dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB, RGB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        for codec, points in result["curves"].items():
            ours = codec in result["models"]
            ax.plot([p["bpp"] for p in points], [p[metric] for p in points], "o-" if ours else ".--",
                    label=codec, linewidth=2 if ours else 1)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        right, low, high = plot_view(result, metric)
        ax.set_xlim(0, right)
        if low is not None:
            ax.set_ylim(low, high)
        ax.grid(alpha=0.3)
        ax.legend()
    count = result["images"]
    fig.suptitle(title or f"{result['data']} ({count} image{'' if count == 1 else 's'})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def check_outputs(out: Path, force: bool) -> None:
    """Refuse, before any measuring, what write_report would refuse."""
    for name in OUTPUTS:
        check_output_file(out / name, force)


def write_report(result: dict, out: Path, force: bool = False) -> list[Path]:
    """The four files as one report (atomic_write_files): a full disk never leaves this run's files beside an
    older run's."""
    check_outputs(out, force)
    plot = rd_plot(result)  # before writing anything, so a missing matplotlib leaves no partial report
    files = {
        "results.json": json_text(result).encode(),
        "per_image.csv": _csv(result["per_image"], PER_IMAGE_FIELDS),
        "curves.csv": _csv([{"codec": c, **p} for c, pts in result["curves"].items() for p in pts], CURVE_FIELDS),
        "rd.png": plot,
    }
    atomic_write_files({out / name: data for name, data in files.items()}, force=force)
    return [out / name for name in files]


def summary(result: dict) -> dict:
    """What `--json` prints and the console table shows: curves and comparisons, without per-image rows."""
    return {k: v for k, v in result.items() if k != "per_image"}
