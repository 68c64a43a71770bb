"""Mean bpp and PSNR of bundles on a folder of images (default ../shared/data/kodak-dev), next to what storing
the same latents as float32 would cost (the seed articles' storage) and JPEG at the same bpp.

    python benchmarks/kodak_rate.py BUNDLE [BUNDLE ...] [--data DIR] [--json] [--record]

--record writes the means and the per-image figures into each bundle's manifest ("evaluation"), which is
what `tests/test_shipped.py` holds shipped bundles to. The manifest is not part of the model id or hashes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import bench_script

from aectl.runtime import Codec, container
from aectl.runtime.errors import AectlError
from aectl.runtime.metrics import baseline_at_bpp, bpp, ms_ssim, psnr

ROOT = Path(__file__).resolve().parents[1]


def float_storage_bpp(header: container.Header, tiles: int) -> float:
    values = header.latent_channels * header.latent_height * header.latent_width * tiles
    return 32 * values / (header.width * header.height)


def measure(bundle: Path, data: Path) -> dict:
    codec = Codec(bundle, provider="cpu")
    rows = []
    for path in sorted(data.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        blob = codec.compress(image)
        header = container.parse(blob)[0]
        tiles = -(-header.width // header.tile_width) * -(-header.height // header.tile_height)
        decoded = np.asarray(codec.decompress(blob))
        rate = bpp(len(blob), header.width, header.height)
        jpeg = baseline_at_bpp(image, "jpeg", rate)
        rows.append({"image": path.name, "bpp": rate, "psnr": psnr(image, decoded), "ms_ssim": ms_ssim(image, decoded),
                     "float_latent_bpp": float_storage_bpp(header, tiles), "jpeg_bpp": jpeg["bpp"],
                     "jpeg_psnr": jpeg["psnr"]})
    if not rows:
        raise AectlError(f"--data {data}: no .png images there")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
    return {"bundle": str(bundle), "preset": codec.bundle.manifest["preset"], "images": len(rows), "mean": mean,
            "per_image": rows}


def main() -> None:
    parser = bench_script.parser(__doc__)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak-dev")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--record", action="store_true", help="store the results in each bundle's manifest")
    args = parser.parse_args()
    results = [measure(b, args.data) for b in args.bundles]
    if args.record:
        for bundle, result in zip(args.bundles, results):
            manifest_path = bundle / "manifest.json"
            manifest = json.loads(manifest_path.read_text())
            manifest["evaluation"] = {"data": args.data.name, "provider": "cpu", "mean": result["mean"],
                                      "per_image": {r["image"]: {k: r[k] for k in ("bpp", "psnr", "ms_ssim")}
                                                    for r in result["per_image"]}}
            manifest_path.write_text(json.dumps(manifest, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'bundle':40s} {'bpp':>7s} {'PSNR':>7s} {'float bpp':>9s} {'JPEG bpp':>8s} {'JPEG PSNR':>9s}")
    for r in results:
        m = r["mean"]
        print(f"{r['bundle'][-40:]:40s} {m['bpp']:7.3f} {m['psnr']:7.2f} {m['float_latent_bpp']:9.2f} "
              f"{m['jpeg_bpp']:8.3f} {m['jpeg_psnr']:9.2f}")


if __name__ == "__main__":
    bench_script.run(main)
