"""What onnxruntime's IOBinding changes for a bundle's encoder and decoder on one provider, against plain
`session.run` (default: the shipped model on the CPU; benchmarks/gpu_check.sh runs it with `--provider cuda`).

    python benchmarks/iobinding_probe.py [BUNDLE] [--provider cpu|cuda] [--image PNG] [--batch 1]
        [--repeats 15] [--json OUT]

Variants, all on the same session, taking turns in every round, each after one warm-up run and a short
untimed pause (PAUSE_S); the ratio to session.run is taken within each round, then the median over rounds:
- session.run: numpy in, numpy out; onnxruntime copies the input to the device and allocates the output,
  then copies it back, on every run.
- iobinding: what aectl runs (runtime/network.py, _Binding): the input refilled in place in an OrtValue on
  the session's device, the output bound there and copied to the host once.
- iobinding, output kept on the device: the same without that copy, i.e. what a device-resident output saves
  when whatever comes next also runs on the device (on the CPU there is no copy to save).
The first two must give the same output (max |diff| is recorded). The decoder runs on the encoder's latents
of the same image, rounded as the codec rounds them. See
https://onnxruntime.ai/docs/performance/tune-performance/iobinding.html
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

from aectl.runtime import load_bundle
from aectl.runtime.network import Network
from aectl.runtime.providers import import_ort, require_provider, run_options

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "kodak-dev" / "kodim01.png"
PAUSE_S = 0.1  # lets the previous run's spinning workers stop, as in ort_knobs.py
VARIANTS = ("session.run", "iobinding", "iobinding, output kept on the device")


def kept_on_device(network: Network, role: str, feed: np.ndarray, options):
    """A run through the role's IOBinding (aectl's own, whose device input one ordinary run sizes for `feed`)
    that leaves its output an OrtValue on the session's device."""
    binding = network.binding(role)
    binding.run(feed, options)

    def run():
        binding.input.update_inplace(feed)
        binding.binding.bind_output(binding.output_name, binding.device, binding.device_id)
        binding.session.run_with_iobinding(binding.binding, options)
        return binding.binding.get_outputs()[0]
    return run


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--provider", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--batch", type=int, default=1, help="copies of the image per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be at least 1")
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.provider == "cuda":
        require_provider("cuda")
    bundle = load_bundle(args.bundle)

    network = Network(bundle, args.provider, args.threads)
    stride = bundle.input_rule["stride"]
    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = rgb.shape[0] // stride * stride, rgb.shape[1] // stride * stride
    x = np.repeat(np.ascontiguousarray(rgb[:h, :w].transpose(2, 0, 1)[None], dtype=np.float32) / 255, args.batch, 0)
    y_hat = network.dequantize(network.quantize(network.encode(x)))
    feeds = {"encoder": x, "decoder": y_hat}
    options = {role: run_options(network.tuning, args.batch * h * w) for role in feeds}

    runs = {}
    for role, feed in feeds.items():
        session = network.session(role)
        name = session.get_inputs()[0].name
        runs[(role, "session.run")] = lambda s=session, n=name, f=feed, o=options[role]: s.run(None, {n: f}, o)[0]
        runs[(role, "iobinding")] = lambda b=network.binding(role), f=feed, o=options[role]: b.run(f, o)
        runs[(role, VARIANTS[2])] = kept_on_device(network, role, feed, options[role])

    results = {"bundle": os.path.relpath(args.bundle.resolve(), ROOT), "provider": args.provider,
               "session_provider": network.session("encoder").get_providers()[0],
               "onnxruntime": import_ort().__version__, "image": f"{w}x{h}", "batch": args.batch,
               "threads": args.threads, "repeats": args.repeats, "roles": {}}
    for role in feeds:
        plain, bound = runs[(role, "session.run")](), runs[(role, "iobinding")]()
        results["roles"][role] = {"max_abs_diff_iobinding_vs_session_run": float(np.abs(plain - bound).max())}
    for run in runs.values():  # warm-up
        run()
    times: dict = {key: [] for key in runs}
    keys = list(runs)
    for r in range(args.repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate, so no variant always follows another
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    print(f"{args.provider} ({results['session_provider']}), {w}x{h} x {args.batch}, {args.repeats} rounds")
    for role in feeds:
        base = times[(role, "session.run")]
        for variant in VARIANTS:
            t = times[(role, variant)]
            rec = {"ms_median": 1e3 * statistics.median(t), "ms_best": 1e3 * min(t),
                   "speed_vs_session_run": statistics.median(a / b for a, b in zip(base, t)),
                   "all_ms": [1e3 * v for v in t]}
            results["roles"][role][variant] = rec
            print(f"  {role:8s} {variant:38s} {rec['ms_median']:8.2f} ms  x{rec['speed_vs_session_run']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
