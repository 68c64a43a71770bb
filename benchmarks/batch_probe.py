"""Network time per image of a bundle's encoder and decoder at batch 1 and 8 (768x512 inputs), with the CPU
arena kept or shrunk after each run (what the runtime does for runs over 1 Mpx). Variants take turns; the
figure is the median of the rounds. Written to check a batch-8 slowdown seen in one `aectl bench` run.

    python benchmarks/batch_probe.py [BUNDLE] [--threads 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from aectl.runtime.providers import create_session, import_ort


def seconds_per_image(session, x: np.ndarray, options) -> float:
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    session.run(None, {name: x}, options)
    return (time.perf_counter() - start) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="models/factorized-q4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ort = import_ort()
    encoder = create_session(f"{args.bundle}/encoder.onnx", "cpu", threads=args.threads)
    decoder = create_session(f"{args.bundle}/decoder.onnx", "cpu", threads=args.threads)
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    rng = np.random.default_rng(0)
    times: dict[tuple, list[float]] = {}
    for batch in (1, 8):
        x = rng.random((batch, 3, 512, 768), dtype=np.float32)
        y = np.round(encoder.run(None, {encoder.get_inputs()[0].name: x})[0]).astype(np.float32)
        for _ in range(2):  # warm-up
            seconds_per_image(encoder, x, None)
            seconds_per_image(decoder, y, None)
        for _ in range(args.rounds):
            for arena, options in (("kept", None), ("shrunk", shrink)):
                times.setdefault((batch, arena, "encoder"), []).append(seconds_per_image(encoder, x, options))
                times.setdefault((batch, arena, "decoder"), []).append(seconds_per_image(decoder, y, options))
    for (batch, arena, network), values in sorted(times.items()):
        print(f"batch {batch}  arena {arena:6}  {network}  {np.median(values) * 1000:6.0f} ms per image")


if __name__ == "__main__":
    main()
