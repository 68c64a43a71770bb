"""Size, decoder speed and PSNR of reduced-precision decoders against their fp32 bundle on kodak-dev.

    python benchmarks/precision.py FP32_BUNDLE VARIANT_BUNDLE [...] [--data DIR] [--threads 2] [--repeats 5]
                                   [--json OUT]

Every image is compressed with each bundle (the variants write the same payload: their encoder is the fp32
one; checked) and decompressed with the same bundle; PSNR is against the original image. Decoder speed is the
network stage alone (onnxruntime session run on the image's latents), the bundles taking turns within every
repeat, reported per bundle as the median over repeats of the summed time over all images, and as the
median of the per-repeat ratio to fp32 (paired, so load changes on a shared machine cancel).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import Codec, container
from aectl.runtime.metrics import bpp, psnr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundles", nargs="+", type=Path, help="the fp32 bundle first, then its variants")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=bench_script.at_least(1), default=5)
    parser.add_argument("--json", type=bench_script.output_file)
    args = parser.parse_args()

    codecs = [Codec(b, provider="cpu", threads=args.threads) for b in args.bundles]
    names = [c.bundle.manifest["files"]["decoder"].get("precision", "fp32") for c in codecs]
    if any(c.bundle.entropy != codecs[0].bundle.entropy for c in codecs):
        raise SystemExit("the bundles are not variants of one model (entropy tables differ)")
    files = sorted(args.data.glob("*.png"))
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    blobs = [codecs[0].compress(a) for a in originals]
    psnrs = {n: [] for n in names}
    for a, blob in zip(originals, blobs):
        for n, c in zip(names, codecs):
            own = c.compress(a)  # the variant's own file: the same payload, its own model id in the header
            assert container.parse(own)[1] == container.parse(blob)[1]
            psnrs[n].append(psnr(a, np.asarray(c.decompress(own))))
    # Latents of each image, decoded by each variant's session alone.
    latents = []
    for blob in blobs:
        header, payload, *_ = codecs[0]._parse(blob)
        from aectl.runtime import entropy_coder

        dec = entropy_coder.new_decoder(payload, header.version)
        shape = codecs[0].network.latent_shape(1, -(-header.height // 16) * 16, -(-header.width // 16) * 16)[1:]
        symbols = codecs[0].coder.decode_block(dec, shape[1:], header.version)[None]
        latents.append(codecs[0].network.dequantize(symbols))
    for c in codecs:
        c.network.decode(latents[0])  # warm-up
    totals = {n: [] for n in names}
    for _ in range(args.repeats):
        for n, c in zip(names, codecs):
            start = time.perf_counter()
            for y in latents:
                c.network.decode(y)
            totals[n].append(time.perf_counter() - start)
    pixels = sum(a.shape[0] * a.shape[1] for a in originals)
    result = {"data": str(args.data), "images": len(files), "threads": args.threads, "repeats": args.repeats,
              "bpp": float(np.mean([bpp(len(b), a.shape[1], a.shape[0]) for a, b in zip(originals, blobs)])),
              "variants": {}}
    for n, c in zip(names, codecs):
        entry = c.bundle.manifest["files"]["decoder"]
        result["variants"][n] = {
            "bundle": str(c.bundle.path), "decoder_bytes": entry["bytes"], "psnr": float(np.mean(psnrs[n])),
            "psnr_loss_db": float(np.mean(psnrs[names[0]]) - np.mean(psnrs[n])),
            "decoder_seconds": statistics.median(totals[n]),
            "decoder_mpx_per_s": pixels / 1e6 / statistics.median(totals[n]),
            "speed_vs_fp32": statistics.median(f / v for f, v in zip(totals[names[0]], totals[n])),
            "repeats_seconds": totals[n]}
    print(f"{'decoder':8s} {'bytes':>9s} {'PSNR':>7s} {'loss dB':>8s} {'dec Mpx/s':>9s} {'x fp32':>7s}")
    for n, v in result["variants"].items():
        print(f"{n:8s} {v['decoder_bytes']:9d} {v['psnr']:7.2f} {v['psnr_loss_db']:8.3f} {v['decoder_mpx_per_s']:9.2f} "
              f"{v['speed_vs_fp32']:7.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
