"""Measure how two onnxruntime providers agree on one bundle, image by image: latent symbols, file bytes,
reconstructions of the same file, and speed. tests/test_cuda.py asserts the tolerances; this prints the
numbers (for the README and the GPU check's log).

    python benchmarks/cross_provider.py [BUNDLE] --a cuda --b cpu [--data DIR] [--json OUT.json]

Timings are per image (768x512 on kodak-dev), median of --repeat runs after one warm-up run per shape.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import Codec
from aectl.runtime.metrics import psnr
from aectl.runtime.providers import require_provider
from aectl.runtime.registry import shipped_bundle

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: session start, cuDNN algorithm choice, TensorRT engine build
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(bundle: Path, data: Path, a: str, b: str, repeat: int) -> dict:
    codecs = {a: Codec(bundle, provider=a), b: Codec(bundle, provider=b)}
    rows = []
    for path in sorted(data.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255
        y = {k: c.encode(x) for k, c in codecs.items()}
        sym = {k: codecs[k].network.quantize(v) for k, v in y.items()}
        files = {k: c.compress(image) for k, c in codecs.items()}
        row = {"image": path.name, "symbols": int(sym[a].size),
               "symbols_differ": int((sym[a] != sym[b]).sum()),
               "max_symbol_diff": int(np.abs(sym[a].astype(np.int64) - sym[b]).max()),
               "max_latent_diff": float(np.abs(y[a] - y[b]).max()),
               "files_identical": files[a] == files[b]}
        worst, frac = 0, 0.0
        for blob in files.values():  # the same file decoded by both providers
            da, db = (np.asarray(codecs[k].decompress(blob)).astype(int) for k in (a, b))
            worst, frac = max(worst, int(np.abs(da - db).max())), max(frac, float((da != db).mean()))
        row |= {"max_pixel_diff": worst, "pixels_differ": frac}
        for k in (a, b):  # each provider's file decoded on the other one
            other = b if k == a else a
            row[f"psnr_{k}_file_on_{other}"] = psnr(image, codecs[other].decompress(files[k]))
            row[f"encode_s_{k}"] = timed(lambda: codecs[k].compress(image), repeat)
            row[f"decode_s_{k}"] = timed(lambda: codecs[k].decompress(files[k]), repeat)
        rows.append(row)
        print(f"{path.name}: {row['symbols_differ']}/{row['symbols']} symbols differ, files identical "
              f"{row['files_identical']}, same file decoded: max {worst} level(s), {frac:.2e} of values; "
              f"compress {row[f'encode_s_{a}'] * 1e3:.1f} ms ({a}) / {row[f'encode_s_{b}'] * 1e3:.1f} ms ({b}), "
              f"decompress {row[f'decode_s_{a}'] * 1e3:.1f} / {row[f'decode_s_{b}'] * 1e3:.1f} ms", flush=True)
    total = sum(r["symbols"] for r in rows)
    summary = {"bundle": str(bundle), "a": a, "b": b, "providers": {k: c.network.providers for k, c in codecs.items()},
               "images": len(rows), "symbol_mismatch_rate": sum(r["symbols_differ"] for r in rows) / total,
               "max_symbol_diff": max(r["max_symbol_diff"] for r in rows),
               "max_latent_diff": max(r["max_latent_diff"] for r in rows),
               "files_identical": sum(r["files_identical"] for r in rows),
               "max_pixel_diff_same_file": max(r["max_pixel_diff"] for r in rows),
               "max_pixels_differ_same_file": max(r["pixels_differ"] for r in rows),
               "median_compress_s": {k: statistics.median(r[f"encode_s_{k}"] for r in rows) for k in (a, b)},
               "median_decompress_s": {k: statistics.median(r[f"decode_s_{k}"] for r in rows) for k in (a, b)}}
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, default=None,
                        help="default: the model `aectl compress` uses without -m")
    parser.add_argument("--a", default="cuda")
    parser.add_argument("--b", default="cpu")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--repeat", type=bench_script.at_least(1), default=3)
    parser.add_argument("--json", type=bench_script.output_file, default=None, help="also write the full report here")
    args = parser.parse_args()
    bundle = args.bundle or shipped_bundle()  # the default quality, as `aectl compress` without -m
    for name in (args.a, args.b):
        require_provider(name)
    report = compare(bundle, args.data, args.a, args.b, args.repeat)
    print(json.dumps(report["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    bench_script.run(main)
