"""What each onnxruntime knob changes for the network stage of a bundle (default: the shipped model) at one
image size (default 768x512, a kodak-dev image), on the CPU provider.

    python benchmarks/ort_knobs.py [--bundle DIR] [--image PNG] [--repeats 7] [--json OUT]

Variants, all timed in the same process and interleaved round-robin (so load changes hit them alike),
median of repeats after one warm-up run each, with a short untimed pause before every timed run (PAUSE_S):
- graph optimisation level disabled / basic / extended / all, at 2 threads
- threads 1 vs 2 (level all)
- the CPU memory arena on (the default) vs off; plus peak RSS of compressing and decompressing a big tiled
  image with the arena off, on (shrunk after runs over SHRINK_ABOVE_PIXELS, the default) and on without
  shrinking, each in a fresh subprocess
- the graph saved after optimisation at the portable extended level, then loaded at level all
- batch 8 vs batch 1 (seconds per image)
Session creation time is recorded for every variant.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import load_bundle
from aectl.runtime.providers import Tuning, create_session

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "level all, 2 threads, arena on (default)"
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "kodak-dev" / "kodim01.png"
# Untimed pause before every timed run. Each of the 16 sessions has its own intra-op thread pool, whose workers
# spin for a while after a run: without the pause they took the cores from the next variant's run, a fixed cost
# per run that made batch 1 look 1.2-1.35x slower per image than batch 8 (benchmarks/README.md). Sessions now
# stop spinning when a run returns (Tuning.stop_spinning); the pause stays so runs compare with earlier ones.
PAUSE_S = 0.1

RSS_SNIPPET = """
import resource, sys, numpy as np
from aectl.runtime import Codec
from aectl.runtime.providers import Tuning
from aectl.runtime.network import Network
codec = Codec(sys.argv[1], provider="cpu", threads=2)
codec.network = Network(codec.bundle, "cpu", 2, Tuning(mem_arena=sys.argv[2] != "off"))
if sys.argv[2] == "on, never shrunk":
    import aectl.runtime.providers as p
    p.SHRINK_ABOVE_PIXELS = 1 << 62
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (int(sys.argv[3]), int(sys.argv[4]), 3), dtype=np.uint8)
data = codec.compress(image)
codec.decompress(data)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=bench_script.at_least(1), default=7)
    parser.add_argument("--big", default="2500x3000", help="HxW of the tiled image for the arena memory test")
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()
    try:  # before the timing, not after it
        bh, bw = (int(v) for v in args.big.split("x"))
    except ValueError:
        parser.error(f"--big {args.big}: give HxW, e.g. 2500x3000")

    bundle = load_bundle(args.bundle)
    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = rgb.shape[0] // 16 * 16, rgb.shape[1] // 16 * 16
    x1 = np.ascontiguousarray(rgb[:h, :w].transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    x8 = np.repeat(x1, 8, axis=0)
    scratch = tempfile.TemporaryDirectory()  # removed at exit, however the script ends
    tmp = Path(scratch.name)
    variants = {}
    for level in ("disabled", "basic", "extended", "all"):
        variants[f"level {level}, 2 threads, arena off"] = (Tuning(optimization=level, mem_arena=False), 2, 1)
    variants[REFERENCE] = (Tuning(), 2, 1)
    variants["level all, 1 thread"] = (Tuning(), 1, 1)
    variants["level all, 2 threads, batch 8"] = (Tuning(), 2, 8)

    results: dict = {"image": f"{w}x{h}", "bundle": os.path.relpath(args.bundle, ROOT), "repeats": args.repeats,
                     "variants": {}}
    sessions = {}
    for role in ("encoder", "decoder"):
        model = bundle.read(role)
        # The saved-optimised route: optimise once at the portable level, write it, load that at level all.
        saved = tmp / f"{role}.extended.onnx"
        create_session(model, "cpu", 2, Tuning(optimization="extended", optimized_model_path=str(saved)))
        for name, (tuning, threads, batch) in list(variants.items()) + \
                [("saved at extended, loaded at all", (Tuning(), 2, 1))]:
            source = str(saved) if name.startswith("saved") else model
            start = time.perf_counter()
            session = create_session(source, "cpu", threads, tuning)
            created = time.perf_counter() - start
            sessions[(role, name)] = (session, batch, created)
    # Feeds: the decoder runs on the encoder's latents of the same image.
    enc = sessions[("encoder", REFERENCE)][0]
    y1 = enc.run(None, {"x": x1})[0]
    feeds = {("encoder", 1): {"x": x1}, ("encoder", 8): {"x": x8},
             ("decoder", 1): {"y_hat": y1}, ("decoder", 8): {"y_hat": np.repeat(y1, 8, axis=0)}}
    times: dict = {key: [] for key in sessions}
    for key, (session, batch, _) in sessions.items():
        session.run(None, feeds[(key[0], batch)])  # warm-up
    keys = list(sessions)
    for r in range(args.repeats):
        # Rotate the order every round, so no variant always runs right after the same other one.
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            session, batch, _ = sessions[key]
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            session.run(None, feeds[(key[0], batch)])
            times[key].append((time.perf_counter() - start) / batch)
    for (role, name), (_, batch, created) in sessions.items():
        results["variants"].setdefault(name, {})[role] = {
            "seconds_per_image": statistics.median(times[(role, name)]), "session_seconds": created,
            "all_seconds_per_image": times[(role, name)]}
    # Paired: the ratio to the reference within each round, then the median over rounds. The machine's load
    # changes between rounds far more than between neighbouring runs.
    for name, roles in results["variants"].items():
        for role, rec in roles.items():
            ref = times[(role, REFERENCE)]
            rec["speed_vs_default"] = statistics.median(a / b for a, b in zip(ref, times[(role, name)]))

    rss = {}
    for arena in ("off", "on", "on, never shrunk"):
        proc = subprocess.run([sys.executable, "-c", RSS_SNIPPET, str(args.bundle), arena, str(bh), str(bw)],
                              capture_output=True, text=True, check=True)
        rss[arena] = int(proc.stdout.strip().splitlines()[-1]) / 1024
    results["arena_peak_rss_mib"] = {"image": f"{bw}x{bh} (tiled at 1024)", **rss}

    print(f"{'variant':36s} {'encoder s/img':>13s} {'x default':>9s} {'decoder s/img':>13s} {'x default':>9s} "
          f"{'session s':>9s}")
    for name, roles in results["variants"].items():
        e, d = roles["encoder"], roles["decoder"]
        print(f"{name:36s} {e['seconds_per_image']:13.3f} {e['speed_vs_default']:9.2f} {d['seconds_per_image']:13.3f} "
              f"{d['speed_vs_default']:9.2f} {e['session_seconds'] + d['session_seconds']:9.3f}")
    print(f"peak RSS compressing+decompressing {results['arena_peak_rss_mib']['image']}: "
          + ", ".join(f"arena {k} {v:.0f} MiB" for k, v in rss.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
