"""`make demo`: the whole pipeline on real images.

1. takes the default pretrained bundle shipped in the package; only when none ships (a development
   checkout before models were trained) it trains one briefly on examples/train-images and exports it,
2. compresses kodak-dev (../shared/data/kodak-dev; examples/images, two Kodak images, where that is absent)
   to .aec files with onnxruntime and decompresses them,
3. prints bpp and PSNR per image beside JPEG at the same bpp, and the bundle's parity figure (torch vs
   onnxruntime, measured at export),
4. measures every shipped quality and JPEG/WebP on the same images and draws the RD plot;
   everything lands under out/demo/ (aec/, decoded/, rd.png), or the folder given: `python examples/demo.py
   [OUT]`. A rerun replaces its own outputs, each written atomically.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from aectl.runtime import Codec, load_bundle
from aectl.runtime.errors import AectlError
from aectl.runtime.image_io import write_image
from aectl.runtime.outputs import atomic_write
from aectl.runtime.metrics import baseline_at_bpp, bpp, psnr
from aectl.runtime.registry import shipped_bundle, shipped_qualities

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "demo"  # or the folder given on the command line
KODAK = HERE.parent.parent / "shared" / "data" / "kodak-dev"
DATA = KODAK if KODAK.is_dir() else HERE / "images"
STEPS = 800


def trained_here(console: Console) -> Path:
    """Fallback when no bundle ships: a brief CPU run, good enough to show the pipeline, not the codec."""
    from aectl.export.onnx_export import export_bundle
    from aectl.train.loop import TrainConfig, train

    run, bundle = OUT / "run", OUT / "bundle"
    console.print(f"no shipped model: training factorized (N=32, M=64) for {STEPS} steps on {HERE / 'train-images'}")
    train(TrainConfig(preset="factorized", quality=5, channels=(32, 64), crop=128, batch_size=8, lr=3e-4,
                      data=str(HERE / "train-images"), out=str(run), steps=STEPS, seed=0, resume=True),
          progress=sys.stderr.isatty(), log=lambda *_: None)
    export_bundle(run, bundle, force=True, log=console.print)
    return bundle


def main() -> None:
    from aectl.cli.rd_report import pyplot

    pyplot()  # the RD plot's matplotlib, asked for first: its absence was a traceback after the whole demo ran
    if OUT.exists() and not OUT.is_dir():
        raise AectlError(f"{OUT} is a file; give a folder for the demo's outputs")
    console = Console()
    levels = shipped_qualities()
    bundle = shipped_bundle(None) if levels else trained_here(console)
    manifest = load_bundle(bundle).manifest
    steps = manifest["training"]["steps"]  # of the run it was exported from: a recipe's last stage
    trained = f"{steps} steps in its last training stage" if "recipe" in manifest["training"] else f"{steps} steps"
    console.print(f"model: {bundle} ({manifest['description']}, {trained})")
    codec = Codec(bundle, provider="auto")
    table = Table(title=f"aectl demo ({', '.join(codec.network.providers) or 'cpu'})")
    for col in ("image", "size", "aec bpp", "aec PSNR", "JPEG bpp", "JPEG PSNR"):
        table.add_column(col, justify="right" if col != "image" else "left")
    (OUT / "aec").mkdir(parents=True, exist_ok=True)
    (OUT / "decoded").mkdir(parents=True, exist_ok=True)
    for path in sorted(DATA.glob("*.png")):
        original = np.asarray(Image.open(path).convert("RGB"))
        data = codec.compress(original)
        atomic_write(OUT / "aec" / f"{path.stem}.aec", data, force=True)
        decoded = codec.decompress(data)
        write_image(OUT / "decoded" / path.name, decoded, force=True)
        h, w = original.shape[:2]
        rate = bpp(len(data), w, h)
        jpeg = baseline_at_bpp(original, "jpeg", rate)
        table.add_row(path.name, f"{w}x{h}", f"{rate:.3f}", f"{psnr(original, np.asarray(decoded)):.2f} dB",
                      f"{jpeg['bpp']:.3f}", f"{jpeg['psnr']:.2f} dB")
    console.print(table)
    parity = manifest["parity"]
    console.print(f"parity torch vs onnxruntime: max |diff| {parity['max_abs_diff']:.2e} "
                  f"(tolerance {parity['tolerance']:.0e})")
    rd_plot_of(list(levels.values()) or [bundle], console)
    console.print(f"outputs in {OUT}: aec/, decoded/, rd.png")


def rd_plot_of(bundles: list[Path], console: Console) -> None:
    """Every shipped quality against JPEG and WebP on the same images, as `aectl eval` measures them."""
    from aectl.cli.rd_report import rd_plot
    from aectl.runtime.evaluate import evaluate

    with console.status("rate-distortion curves: shipped models, JPEG and WebP"):
        result = evaluate(bundles, DATA, ["jpeg", "webp"], provider="cpu")
    title = f"{DATA.name}: aectl shipped models vs JPEG and WebP"
    atomic_write(OUT / "rd.png", rd_plot(result, title=title), force=True)
    for model, against in result["comparisons"].items():
        for baseline, c in against.items():
            if c["bd_rate_psnr"] is not None:
                console.print(f"BD-rate {model} vs {baseline} (PSNR): {c['bd_rate_psnr']:+.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The whole aectl pipeline on real images (what `make demo` runs).")
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"output folder (default: {OUT})")
    OUT = parser.parse_args().out
    try:
        main()
    except AectlError as exc:  # one line, as aectl's commands say it
        sys.exit(f"error: {exc}")
    except OSError as exc:  # a folder that cannot be written
        sys.exit(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}")
