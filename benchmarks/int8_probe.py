"""INT8 decoders made from a bundle's own fp32 decoder.onnx, against it, on kodak-dev: file size, PSNR and
decoder speed. It needs no checkpoint: it makes the same `quantize_int8` call as `aectl export --precision int8`,
calibrated on the same photos (`variant_images`: every other file of the folder), as export does now
(percentile ranges, output convolution in fp32) and as it did before (min-max ranges; before that, the output
convolution quantised too), so the before/after is measured in one run.

    python benchmarks/int8_probe.py [BUNDLE] [--calibration DIR] [--images DIR] [--threads 2] [--rounds 9]
                                    [--json OUT]

Speed is the decoder session alone on each image's real latents (from the fp32 codec's own files); the four
decoders take turns in every round after a short pause (so no session's spinning workers slow the next), and
each variant's speed is the median over rounds of its per-round ratio to fp32 (paired: load changes on a
shared machine cancel). PSNR is of each decoder's output, rounded to 8 bits, against the original image.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.export.onnx_export import variant_images
from aectl.export.precision import calibration_latents, quantize_int8
from aectl.runtime import Codec, container
from aectl.runtime.entropy_coder import new_decoder
from aectl.runtime.metrics import psnr
from aectl.runtime.providers import create_session

ROOT = Path(__file__).resolve().parents[1]
PAUSE_S = 0.1


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "models" / "factorized-q4")
    parser.add_argument("--calibration", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=bench_script.at_least(1), default=9)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()

    codec = Codec(args.bundle, provider="cpu", threads=args.threads)
    fp32 = args.bundle / "decoder.onnx"
    photos = variant_images({}, args.calibration)
    latents = calibration_latents(str(args.bundle / "encoder.onnx"), codec.network, photos["calibrate"])
    decoders = {"fp32": (fp32, {})}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep, calibration in (("int8", True, "percentile"), ("int8, min-max", True, "minmax"),
                                        ("int8, min-max, output quantised", False, "minmax")):
            path = Path(tmp) / f"{len(decoders)}.onnx"
            decoders[name] = (path, quantize_int8(fp32, path, latents, keep, calibration))
        sizes = {name: path.stat().st_size for name, (path, _) in decoders.items()}
        sessions = {name: create_session(str(path), "cpu", args.threads) for name, (path, _) in decoders.items()}

    originals, inputs = [], []
    for path in sorted(args.images.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        header, payload, _ = container.parse(codec.compress(image))
        symbols = codec.coder.decode_block(new_decoder(payload, header.version),
                                           (header.latent_height, header.latent_width), header.version)
        originals.append(image)
        inputs.append(codec.network.dequantize(symbols[None]))
    feed = sessions["fp32"].get_inputs()[0].name

    def pixels(session, y, shape):
        x = session.run(None, {feed: y})[0][0].transpose(1, 2, 0)[:shape[0], :shape[1]]
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)

    quality = {name: float(np.mean([psnr(a, pixels(s, y, a.shape)) for a, y in zip(originals, inputs)]))
               for name, s in sessions.items()}
    seconds = {name: [] for name in sessions}
    for _ in range(args.rounds + 1):  # the first round is warm-up
        for name, session in sessions.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            for y in inputs:
                session.run(None, {feed: y})
            seconds[name].append(time.perf_counter() - start)
    mpx = sum(a.shape[0] * a.shape[1] for a in originals) / 1e6
    result = {"bundle": os.path.relpath(args.bundle, ROOT), "images": len(originals), "threads": args.threads,
              "rounds": args.rounds, "variants": {}}
    print(f"{result['bundle']}: {len(originals)} images, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'decoder':32s} {'bytes':>10s} {'PSNR dB':>8s} {'loss dB':>8s} {'Mpx/s':>7s} {'vs fp32':>8s}")
    for name in sessions:
        ratios = [f / v for f, v in zip(seconds["fp32"][1:], seconds[name][1:])]
        row = {"bytes": sizes[name], "psnr_db": quality[name], "psnr_loss_db": quality["fp32"] - quality[name],
               "mpx_per_s": mpx / statistics.median(seconds[name][1:]), "speed_vs_fp32": statistics.median(ratios),
               "speed_vs_fp32_per_round": ratios, "conversion": decoders[name][1]}
        result["variants"][name] = row
        print(f"{name:32s} {row['bytes']:10d} {row['psnr_db']:8.2f} {row['psnr_loss_db']:8.2f} "
              f"{row['mpx_per_s']:7.2f} {row['speed_vs_fp32']:7.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
