"""Network time per image of a bundle's encoder and decoder by batch size, on real photos: kodak-dev images
(portrait ones turned to 768x512) or square crops of them (--crop S). onnxruntime with the runtime's own
sessions and run options; batch sizes take turns within each round; the figure is the median of the rounds
(the first round is warm-up). It chose the runtime's pixel budget per session run (runtime/network.py
CPU_RUN_PIXELS). Random inputs are no substitute: noise latents made the decoder 2x slower per image.
Runs over providers.SHRINK_ABOVE_PIXELS hand the memory arena back afterwards, as in the runtime, so the next
run page-faults its buffers afresh; --keep-arena never shrinks it, to tell that cost from the run's own.

--budgets 16,18 times the whole codec instead: compress_batch and decompress_batch of the 8 images (at most
8 per run, as the codec's default batch size) with CPU_RUN_PIXELS set to each 2**k in turn, against
compress and decompress of one image at a time, entropy coding and pixel conversion included.

    python benchmarks/batch_probe.py [BUNDLE] [--images DIR] [--crop S] [--batches 1,2,4,8] [--threads 2]
                                     [--keep-arena] [--budgets 16,18]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import bench_script

from aectl.runtime import network as network_module, providers
from aectl.runtime.bundle import load_bundle
from aectl.runtime.codec import Codec
from aectl.runtime.container import DEFAULT_MAX_PIXELS
from aectl.runtime.image_io import read_rgb
from aectl.runtime.network import Network


def photos(folder: Path, count: int, crop: int | None) -> np.ndarray:
    """`count` images (N, 3, H, W) in [0, 1]: whole 768x512 photos, or crop x crop tiles cut from them."""
    out = []
    for path in sorted(folder.glob("*.png")):
        rgb = read_rgb(path, DEFAULT_MAX_PIXELS)
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
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", default=str(bench_script.ROOT / "models" / "factorized-q4"))
    parser.add_argument("--images", type=Path, default=bench_script.KODAK)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=bench_script.at_least(2), default=6, help="the first is warm-up")
    parser.add_argument("--keep-arena", action="store_true", help="never shrink the memory arena after a run")
    parser.add_argument("--budgets", help="time the codec with CPU_RUN_PIXELS = 2**k for each k given")
    args = parser.parse_args()
    if args.budgets:
        return codec_budgets(args, [int(k) for k in args.budgets.split(",")])
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
    print(f"{args.bundle}, {count} images of {w}x{h}, {args.threads} threads, median of {args.rounds - 1} rounds, "
          f"arena {'kept' if args.keep_arena else f'shrunk after runs over {providers.SHRINK_ABOVE_PIXELS} px'}")
    for (role, b), values in sorted(times.items()):
        print(f"{role}  batch {b:2d}  {h * w * b / 1e6:5.2f} Mpx per run  {np.median(values[1:]) * 1000:7.2f} ms "
              f"per image")


def codec_budgets(args, budgets: list[int]) -> None:
    """ms per image of the codec's batch calls under each run budget, and of one image at a time."""
    codec = Codec(args.bundle, provider="cpu", threads=args.threads)
    x = photos(args.images, 8, args.crop)
    images = list((x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
    files = codec.compress_batch(images)
    cases = {"one at a time": (lambda: [codec.compress(img) for img in images],
                               lambda: [codec.decompress(f) for f in files], None)}
    for k in budgets:
        cases[f"runs of <= 2**{k} px"] = (lambda: codec.compress_batch(images),
                                          lambda: codec.decompress_batch(files), k)
    saved = network_module.CPU_RUN_PIXELS
    times: dict[tuple, list[float]] = {}
    try:
        names = list(cases)
        for r in range(args.rounds):  # each round starts with the next case: no case always follows the same one
            for name in names[r % len(names):] + names[:r % len(names)]:
                compress, decompress, k = cases[name]
                network_module.CPU_RUN_PIXELS = saved if k is None else 1 << k
                for task, run in (("compress", compress), ("decompress", decompress)):
                    start = time.perf_counter()
                    run()
                    times.setdefault((name, task), []).append((time.perf_counter() - start) / len(images))
    finally:
        network_module.CPU_RUN_PIXELS = saved
    h, w = x.shape[2:]
    print(f"{args.bundle}, 8 images of {w}x{h}, {args.threads} threads, codec, median of {args.rounds - 1} rounds, "
          "order rotating")
    for (name, task), values in times.items():
        print(f"{task:10s}  {name:20s}  {np.median(values[1:]) * 1000:7.2f} ms per image")


if __name__ == "__main__":
    bench_script.run(main)
