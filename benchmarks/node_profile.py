"""Where a decoder's time goes, node by node: onnxruntime's own profiler on real kodak-dev latents, for a
bundle's fp32 decoder.onnx and (with --int8) the int8 decoder `aectl export --precision int8` makes from it.

    python benchmarks/node_profile.py [BUNDLE] [--int8] [--images DIR] [--count 3] [--threads 2] [--runs 5]
                                      [--top 25] [--json OUT]

Each node's kernel time is summed over the timed runs and divided by the images decoded: ms per image. The
profiler records the nodes of the graph onnxruntime actually runs (after its optimisations: QLinearConv,
NCHWc convolutions and their reorders, transposes), which is what the per-node figures in
benchmarks/README.md come from. Totals are kernel time only (no session overhead), so they are a little
under what `int8_probe.py` times for the whole run.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import Codec, container
from aectl.runtime.entropy_coder import new_decoder
from aectl.runtime.providers import import_ort, session_options

ROOT = Path(__file__).resolve().parents[1]
WARM_RUNS = 2


def latents(codec: Codec, images: list[Path]) -> list[np.ndarray]:
    """Each image's dequantised latents, read back from the codec's own .aec bytes."""
    out = []
    for path in images:
        header, payload, _ = container.parse(codec.compress(np.asarray(Image.open(path).convert("RGB"))))
        symbols = codec.coder.decode_block(new_decoder(payload, header.version),
                                           (header.latent_height, header.latent_width), header.version)
        out.append(codec.network.dequantize(symbols[None]))
    return out


def profile(model: Path, inputs: list[np.ndarray], threads: int, runs: int) -> dict[str, tuple[str, float]]:
    """{node name: (op type, ms per image)} over `runs` passes of all inputs, after WARM_RUNS untimed ones."""
    ort = import_ort()
    options = session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        for _ in range(WARM_RUNS):
            for y in inputs:
                session.run(None, {feed: y})
        for _ in range(runs):
            for y in inputs:
                session.run(None, {feed: y})
        events = json.loads(Path(session.end_profiling()).read_text())
    warm = WARM_RUNS * len(inputs)
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    start_us = runs_seen[warm]["ts"] if len(runs_seen) > warm else 0
    nodes: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start_us:
            row = nodes.setdefault(e["name"][:-len("_kernel_time")], [e["args"]["op_name"], 0.0])
            row[1] += e["dur"] / 1000 / (runs * len(inputs))
    return {name: (op, ms) for name, (op, ms) in nodes.items()}


def by_op(nodes: dict[str, tuple[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = collections.defaultdict(float)
    for op, ms in nodes.values():
        totals[op] += ms
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--int8", action="store_true", help="also profile the int8 decoder export makes")
    parser.add_argument("--calibration", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--count", type=int, default=3, help="images decoded per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=bench_script.at_least(1), default=5)
    parser.add_argument("--top", type=bench_script.at_least(1), default=25, help="nodes listed per decoder")
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()

    codec = Codec(args.bundle, provider="cpu", threads=args.threads)  # a bad bundle is named first, as elsewhere
    images = sorted(args.images.glob("*.png"))[:args.count]
    if not images or args.runs < 1:
        parser.error(f"need PNG images in {args.images} and --runs >= 1")
    inputs = latents(codec, images)
    result = {"bundle": os.path.relpath(args.bundle, ROOT), "images": len(inputs), "threads": args.threads,
              "runs": args.runs, "decoders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        decoders = {"fp32": args.bundle / "decoder.onnx"}
        if args.int8:
            from aectl.export.onnx_export import variant_images
            from aectl.export.precision import calibration_latents, quantize_int8

            photos = variant_images({}, args.calibration)
            calibration = calibration_latents(str(args.bundle / "encoder.onnx"), codec.network, photos["calibrate"])
            decoders["int8"] = Path(tmp) / "int8.onnx"
            quantize_int8(decoders["fp32"], decoders["int8"], calibration)
        for name, path in decoders.items():
            nodes = profile(path, inputs, args.threads, args.runs)
            ops = by_op(nodes)
            result["decoders"][name] = {"total_ms": sum(ops.values()), "by_op": ops,
                                        "nodes": {n: {"op": op, "ms": ms} for n, (op, ms) in nodes.items()}}
            print(f"{name}: {sum(ops.values()):.2f} ms per image (kernel time, {args.threads} threads)")
            for op, ms in ops.items():
                print(f"  {op:24s} {ms:7.2f}")
            for n, (op, ms) in sorted(nodes.items(), key=lambda kv: -kv[1][1])[:args.top]:
                print(f"    {n:44s} {op:18s} {ms:7.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
