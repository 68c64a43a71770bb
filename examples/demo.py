"""`make demo`: the whole pipeline on real images that live in this repository.

1. trains the factorized model briefly on examples/train-images (two photos; Kodak is never trained on),
2. exports it to ONNX (parity against torch checked),
3. compresses examples/images (two Kodak images) to .aec files with onnxruntime and decompresses them,
4. prints bpp and PSNR per image beside JPEG at the same bpp, and writes everything under out/demo/.

A few hundred CPU steps make a weak model: this shows the pipeline, not the rate-distortion the codec reaches
with full training.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from aectl.export.onnx_export import export_bundle
from aectl.runtime import Codec
from aectl.runtime.metrics import baseline_at_bpp, bpp, psnr
from aectl.train.loop import TrainConfig, train

HERE = Path(__file__).resolve().parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "out" / "demo"
STEPS = 800


def main() -> None:
    console = Console()
    run, bundle = OUT / "run", OUT / "bundle"
    console.print(f"[bold]1/3[/] training factorized (N=32, M=64) for {STEPS} steps on {HERE / 'train-images'}")
    train(TrainConfig(preset="factorized", quality=5, channels=(32, 64), crop=128, batch_size=8, lr=1e-3,
                      data=str(HERE / "train-images"), out=str(run), steps=STEPS, seed=0, resume=True),
          progress=sys.stderr.isatty(), log=lambda *_: None)
    console.print("[bold]2/3[/] exporting to ONNX")
    manifest = export_bundle(run, bundle, force=True, log=console.print)
    console.print("[bold]3/3[/] compressing and decompressing with onnxruntime")
    codec = Codec(bundle, provider="auto")
    table = Table(title=f"aectl demo ({', '.join(codec.network.providers) or 'cpu'})")
    for col in ("image", "size", "aec bpp", "aec PSNR", "JPEG bpp", "JPEG PSNR"):
        table.add_column(col, justify="right" if col != "image" else "left")
    (OUT / "aec").mkdir(parents=True, exist_ok=True)
    (OUT / "decoded").mkdir(parents=True, exist_ok=True)
    for path in sorted((HERE / "images").glob("*.png")):
        original = np.asarray(Image.open(path).convert("RGB"))
        data = codec.compress(original)
        (OUT / "aec" / f"{path.stem}.aec").write_bytes(data)
        decoded = codec.decompress(data)
        decoded.save(OUT / "decoded" / path.name)
        h, w = original.shape[:2]
        rate = bpp(len(data), w, h)
        jpeg = baseline_at_bpp(original, "jpeg", rate)
        table.add_row(path.name, f"{w}x{h}", f"{rate:.3f}", f"{psnr(original, np.asarray(decoded)):.2f} dB",
                      f"{jpeg['bpp']:.3f}", f"{jpeg['psnr']:.2f} dB")
    console.print(table)
    parity = manifest["parity"]
    console.print(f"parity torch vs onnxruntime: max |diff| {parity['max_abs_diff']:.2e} "
                  f"(tolerance {parity['tolerance']:.0e}); outputs in {OUT}")


if __name__ == "__main__":
    main()
