"""What onnxruntime's "session.force_spinning_stop" (providers.Tuning.stop_spinning, on by default) changes for a
codec on the CPU provider: images compressed and decompressed by a codec with it on against one with it off,
both in this process, taking turns every round (so load changes hit them alike).

    python benchmarks/spinning_probe.py [BUNDLE] [--images DIR] [--rounds 5] [--json OUT]

Each session has its own intra-op thread pool, whose workers keep spinning for a while after a run. A codec
holds two sessions, so whenever it switches between encoding and decoding, the pool that just ran spins
while the other works. Per round and variant, after an untimed pause (so the previous variant's spinning is
over), seconds per image of:
- round trip: every image compressed, then decompressed at once (what `aectl evaluate`, rate control over
  several qualities and this bench's passes do), compress and decompress timed apart;
- back to back: all images decompressed in a row, then all compressed in a row (one session after itself,
  where stopping the spin could cost a wake-up per run);
- small runs: the decoder network alone on a 64x64 crop's latents, 50 runs back to back (the run is short,
  so a wake-up per run would show most here).
The median over rounds of each variant's ratio to the other within the round is reported.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.perf.bench import _cpu_name
from aectl.runtime import Codec, load_bundle
from aectl.runtime.network import Network
from aectl.runtime.providers import Tuning

ROOT = Path(__file__).resolve().parents[1]
PAUSE_S = 0.3
SMALL_RUNS = 50


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(codec: Codec, images: list, blobs: list, small: np.ndarray) -> dict:
    """Seconds per image (per run for small runs) of one round, for one codec."""
    out = {}
    time.sleep(PAUSE_S)
    trip_c, trip_d = [], []
    for image, blob in zip(images, blobs):
        trip_c.append(timed(lambda: codec.compress(image)))
        trip_d.append(timed(lambda: codec.decompress(blob)))
    out["round trip: compress"], out["round trip: decompress"] = np.mean(trip_c), np.mean(trip_d)
    time.sleep(PAUSE_S)
    out["back to back: decompress"] = timed(lambda: [codec.decompress(b) for b in blobs]) / len(blobs)
    out["back to back: compress"] = timed(lambda: [codec.compress(i) for i in images]) / len(images)
    time.sleep(PAUSE_S)
    out["small runs: decoder network, 64x64"] = timed(
        lambda: [codec.network.decode(small) for _ in range(SMALL_RUNS)]) / SMALL_RUNS
    return out


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--rounds", type=bench_script.at_least(1), default=5)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    codecs = {}
    for name, stop in (("stop spinning on (default)", True), ("stop spinning off", False)):
        network = Network(bundle, "cpu", 2, Tuning(stop_spinning=stop))
        codecs[name] = Codec(bundle, provider="cpu", threads=2, network=network)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(args.images.glob("*.png"))]
    setup = codecs["stop spinning off"]
    blobs = [setup.compress(image) for image in images]
    crop = np.ascontiguousarray(images[0][:64, :64].transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    small = setup.network.dequantize(setup.network.quantize(setup.encode(crop)))
    for codec in codecs.values():  # warm-up: every session has seen every input size
        measure(codec, images[:2], blobs[:2], small)
    rounds: dict = {name: [] for name in codecs}
    names = list(codecs)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            rounds[name].append(measure(codecs[name], images, blobs, small))
    on, off = names
    result = {"bundle": os.path.relpath(args.bundle, ROOT), "images": len(images), "rounds": args.rounds,
              "processor": _cpu_name(), "seconds": {}, "off_over_on": {}}
    for key in rounds[on][0]:
        result["seconds"][key] = {name: statistics.median(r[key] for r in rounds[name]) for name in names}
        result["off_over_on"][key] = statistics.median(b[key] / a[key] for a, b in zip(rounds[on], rounds[off]))
    print(f"{result['bundle']}, {len(images)} images, {args.rounds} rounds, {result['processor']}; ms per image "
          "(per run for small runs), median over rounds")
    print(f"{'':40s} {'on':>8s} {'off':>8s} {'off / on':>9s}")
    for key, secs in result["seconds"].items():
        print(f"{key:40s} {1e3 * secs[on]:8.2f} {1e3 * secs[off]:8.2f} {result['off_over_on'][key]:9.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
