"""Network time per image of a bundle's encoder and decoder by batch size, on real photos: kodak-dev images
(portrait ones turned to 768x512) or square crops of them (--crop S). onnxruntime with the runtime's own
sessions and run options; batch sizes take turns within each round; the figure is the median of the rounds
(the first round is warm-up). It chose the runtime's pixel budget per session run (runtime/network.py
CPU_RUN_PIXELS). Random inputs are no substitute: noise latents made the decoder 2x slower per image.
Runs over providers.SHRINK_ABOVE_PIXELS hand the memory arena back afterwards, as in the runtime, so the next
run page-faults its buffers afresh; --keep-arena never shrinks it, to tell that cost from the run's own.

    python benchmarks/batch_probe.py [BUNDLE] [--images DIR] [--crop S] [--batches 1,2,4,8] [--threads 2]
                                     [--keep-arena]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from aectl.runtime import providers
from aectl.runtime.bundle import load_bundle
from aectl.runtime.network import Network


def photos(folder: Path, count: int, crop: int | None) -> np.ndarray:
    """`count` images (N, 3, H, W) in [0, 1]: whole 768x512 photos, or crop x crop tiles cut from them."""
    out = []
    for path in sorted(folder.glob("*.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        if crop is None:
            out.append(rgb if rgb.shape[0] <= rgb.shape[1] else rgb.transpose(1, 0, 2))
        else:
            out += [rgb[y:y + crop, x:x + crop] for y in range(0, rgb.shape[0] - crop + 1, crop)
                    for x in range(0, rgb.shape[1] - crop + 1, crop)]
        if len(out) >= count:
            break
    if len(out) < count:
        raise SystemExit(f"{folder}: only {len(out)} images, {count} needed")
    return np.stack(out[:count]).transpose(0, 3, 1, 2).astype(np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="models/factorized-q4")
    parser.add_argument("--images", type=Path, default=Path("../shared/data/kodak-dev"))
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keep-arena", action="store_true", help="never shrink the memory arena after a run")
    args = parser.parse_args()
    if args.keep_arena:
        providers.SHRINK_ABOVE_PIXELS = 1 << 62
    batches = [int(b) for b in args.batches.split(",")]
    count = max(batches)
    network = Network(load_bundle(args.bundle), "cpu", args.threads)
    x = photos(args.images, count, args.crop)
    latents = np.concatenate([network.dequantize(network.quantize(network.encode(x[i:i + 1]))) for i in range(count)])
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for b in batches:
            for role, data, run in (("encoder", x, network.encode), ("decoder", latents, network.decode)):
                start = time.perf_counter()
                for first in range(0, count, b):
                    run(data[first:first + b])
                times.setdefault((role, b), []).append((time.perf_counter() - start) / count)
    h, w = x.shape[2:]
    print(f"{args.bundle}, {count} images of {h}x{w}, {args.threads} threads, median of {args.rounds - 1} rounds, "
          f"arena {'kept' if args.keep_arena else f'shrunk after runs over {providers.SHRINK_ABOVE_PIXELS} px'}")
    for (role, b), values in sorted(times.items()):
        print(f"{role}  batch {b:2d}  {h * w * b / 1e6:5.2f} Mpx per run  {np.median(values[1:]) * 1000:7.1f} ms "
              f"per image")


if __name__ == "__main__":
    main()
