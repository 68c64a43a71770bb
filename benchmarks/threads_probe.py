"""What the default thread count changes for `aectl compress` / `decompress` over many files: the CLI's own
per-file loop (runtime/files.run_jobs: read, code, write atomically with fsync; PNGs at the CLI's zlib level)
with codecs whose sessions get aectl's default (one thread per physical core, an explicit count:
runtime/cores.py), onnxruntime's own default (intra_op_num_threads 0, which pins each worker thread to a core)
and one thread. All in this process,
taking turns every round, the order rotating; the first round is warm-up.

    python benchmarks/threads_probe.py [BUNDLE] [--images DIR] [--crop 64] [--limit 100] [--rounds 6] [--json OUT]

Inputs are --limit square crops of --crop px cut from the photos (--crop 0: the photos whole), written as PNG
to a temporary folder. Reported per variant: ms per file to compress and to decompress (median over rounds),
and each variant's time over aectl's default within a round (median over rounds).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.perf.bench import _cpu_name
from aectl.runtime import Codec
from aectl.runtime.cores import default_threads
from aectl.runtime.files import AEC_SUFFIX, plan_jobs, run_jobs
from aectl.runtime.image_io import PNG_COMPRESSION, write_image

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"aectl default": None, "onnxruntime default (0)": 0, "1 thread": 1}
PNG_SAVE = {"compress_level": PNG_COMPRESSION}  # as `aectl decompress` writes them


def write_inputs(images: Path, crop: int, limit: int, folder: Path) -> int:
    """Up to `limit` PNGs in `folder`: crop x crop tiles cut from the photos, or the photos whole (crop 0)."""
    count = 0
    for path in sorted(images.glob("*.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        tiles = [rgb] if not crop else [rgb[y:y + crop, x:x + crop] for y in range(0, rgb.shape[0] - crop + 1, crop)
                                        for x in range(0, rgb.shape[1] - crop + 1, crop)]
        for tile in tiles[:limit - count]:
            Image.fromarray(tile).save(folder / f"{count:04d}.png")
            count += 1
        if count >= limit:
            break
    return count


def per_file_loop(codec: Codec, inputs: Path, out: Path) -> dict[str, float]:
    """Seconds for all files, compressed then decompressed as the CLI does it."""
    times = {}
    start = time.perf_counter()
    results = run_jobs(plan_jobs([inputs], out, {".png"}, AEC_SUFFIX), lambda job: (codec.compress(job.source), {}),
                       force=True)
    times["compress"] = time.perf_counter() - start
    start = time.perf_counter()
    results += run_jobs(plan_jobs([out], out, {AEC_SUFFIX}, ".png"),
                        lambda job: (codec.decompress(job.source.read_bytes()), {}), force=True,
                        write=lambda job, image: write_image(job.target, image, force=True,
                                                              save_options=PNG_SAVE))
    times["decompress"] = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} files failed: {failed[0]}")
    return times


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds needs 2 or more: the first is warm-up")

    codecs = {name: Codec(args.bundle, provider="cpu", threads=threads) for name, threads in VARIANTS.items()}
    seconds = {name: {"compress": [], "decompress": []} for name in codecs}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        count = write_inputs(args.images, args.crop, args.limit, inputs)
        names = list(codecs)
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                for task, s in per_file_loop(codecs[name], inputs, Path(tmp) / f"out{names.index(name)}").items():
                    seconds[name][task].append(s)
    result = {"bundle": str(args.bundle), "images": str(args.images), "crop": args.crop, "files": count,
              "rounds": args.rounds, "cpu": _cpu_name(), "default_threads": default_threads(),
              "ms_per_file": {n: {t: 1e3 * statistics.median(v[1:]) / count for t, v in d.items()}
                              for n, d in seconds.items()},
              "time_over_aectl_default": {
                  n: {t: statistics.median(a / b for a, b in zip(v[1:], seconds[names[0]][t][1:]))
                      for t, v in d.items()} for n, d in seconds.items()},
              "seconds": seconds}
    size = f"{args.crop}x{args.crop} crops" if args.crop else "whole photos"
    print(f"{count} files ({size}), {result['cpu']}, aectl's default: {result['default_threads']} threads; "
          f"ms per file, median of {args.rounds - 1} rounds (time over aectl's default)")
    ratios = result["time_over_aectl_default"]
    for name, ms in result["ms_per_file"].items():
        print(f"{name:26s} compress {ms['compress']:7.2f} ({ratios[name]['compress']:.2f}x)   "
              f"decompress {ms['decompress']:7.2f} ({ratios[name]['decompress']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
