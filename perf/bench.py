"""`aectl bench`: compress/decompress throughput of the onnxruntime runtime beside the same model in torch
eager and beside JPEG/WebP through Pillow, in one process and one run, with the time split per pipeline stage
and the achieved MAC rate of encoder and decoder against the machine's measured matmul peak.

Method (what every number means):
- Compress: image file -> .aec bytes, through `Codec.compress_batch` as users call it (file decoding by
  Pillow, padding, network, quantisation, range coding, container). Decompress: .aec bytes -> PIL image
  (no image file is written: PNG encoding is not part of the codec and would dominate). Batches of
  `batch_size` images go through one call, so same-size images share one network run.
- Warm-up: one untimed pass over all images per engine and batch size (sessions, allocations, caches, every
  image size). With only the first image as warm-up, the first batch size timed ran 10-15% slower on the CPU
  whenever torch shared the process, in whichever order the batch sizes came (benchmarks/README.md).
- Each repeat times a full pass over all images; the reported pass is the median pass by total time and
  its stage split (profile.Stages). Throughput = pixels (or images) of the pass / seconds of the pass.
- torch eager runs the same weights (aectl.train.torch_ref) inside the same Codec pipeline, on the same device
  with the same thread count; only the network stage differs. Its largest difference to onnxruntime is
  reported beside the times.
- JPEG/WebP: per image, the Pillow quality whose file is closest to the .aec file's bpp
  (metrics.baseline_at_bpp); timed as file -> encoded bytes and encoded bytes -> decoded image.
- MACs come from the ONNX graphs at each padded image size (perf.macs); achieved MAC/s = MACs of the pass /
  network seconds of the pass; peak = perf.peak.matmul_peak on the same provider and thread count, measured
  in this run before and after the timed passes, the faster of the two per size (perf.peak.best_of). The
  machine's load average is recorded: other processes share the cores.
"""
from __future__ import annotations

import io
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aectl.perf.peak import best_of, matmul_peak
from aectl.runtime.container import DEFAULT_MAX_PIXELS
from aectl.runtime.errors import AectlError
from aectl.runtime.image_io import read_rgb, to_pixels
from aectl.runtime.profile import Stages

ENGINES = ("onnxruntime", "torch")
BASELINES = ("jpeg", "webp")
PAUSE_S = 0.2  # untimed, before every timed pass: the previous engine's threads stop spinning (_time_engines)


@dataclass
class BenchConfig:
    bundle: str
    images: str
    provider: str = "cpu"              # cpu, cuda or all
    threads: int = 2
    repeats: int = 3
    batch_sizes: tuple[int, ...] = (1, 8)
    torch: bool = True                 # also torch eager when torch is importable
    baselines: tuple[str, ...] = BASELINES
    limit: int | None = None           # use only the first N images (sorted by name)
    peak: bool = True                  # measure the matmul peak (without it, MAC rates have no share of it)
    extra: dict = field(default_factory=dict)


def _image_files(folder: Path, limit: int | None) -> list[Path]:
    from aectl.runtime.files import IMAGE_SUFFIXES, files_in

    if not folder.is_dir():
        raise AectlError(f"--images {folder}: not a directory")
    files = files_in(folder, IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise AectlError(f"--images {folder}: no images found")
    return files


def _providers(asked: str) -> list[str]:
    from aectl.runtime.providers import usable_providers

    if asked == "all":
        usable = [name for name, state in usable_providers().items() if state == "works"]
        if not usable:
            raise AectlError("no onnxruntime provider works here (see aectl doctor)")
        return usable
    if asked not in ("cpu", "cuda"):
        raise AectlError(f"--provider {asked!r}: choose cpu, cuda or all")
    return [asked]


def _pass_record(times: list[float], stages: list[dict], pixels: int, images: int) -> dict:
    order = sorted(range(len(times)), key=times.__getitem__)
    mid = order[(len(order) - 1) // 2]
    seconds = times[mid]
    split = stages[mid] if stages else {}
    rec = {"seconds": seconds, "images_per_s": images / seconds, "mpx_per_s": pixels / 1e6 / seconds,
           "repeats_seconds": times}
    if split:
        rec["stages"] = split
        rec["shares"] = {k: v / seconds for k, v in split.items()}
        rec["entropy_container_share"] = (split["entropy"] + split["container"]) / seconds
        rec["unaccounted_share"] = 1 - sum(split.values()) / seconds
    return rec


def _matmul_peak(provider: str, threads: int) -> dict:
    try:
        return matmul_peak(provider, threads)
    except AectlError as exc:
        return {"error": str(exc)}


def _time_engines(engines: dict, files: list[Path], pixels: int, batch: int, repeats: int) -> dict:
    """Per engine: {"compress": record, "decompress": record, "blobs": [...], "decoded": [...]}.

    Engines take turns within every repeat (A B A B ...), so a change in the machine's load during the run
    falls on all of them alike and their ratios stay comparable. An untimed pause before every pass lets the
    previous engine's worker threads stop spinning (torch's OpenMP workers spin on after a run and took 13%
    off onnxruntime's next run here), so no engine pays for the one before it.
    """
    groups = [files[i:i + batch] for i in range(0, len(files), batch)]
    times = {name: {"compress": [], "decompress": []} for name in engines}
    splits = {name: {"compress": [], "decompress": []} for name in engines}
    outputs: dict = {name: {} for name in engines}
    for codec in engines.values():
        codec.batch_size = batch
        codec.stages = None
        for group in groups:  # warm-up, not timed: a whole pass, so every image size has been seen
            codec.decompress_batch(codec.compress_batch(list(group)))
    for _ in range(repeats):
        for name, codec in engines.items():
            for direction in ("compress", "decompress"):
                stages = Stages()
                codec.stages = stages
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                if direction == "compress":
                    out = [blob for g in groups for blob in codec.compress_batch(list(g))]
                else:
                    blobs = outputs[name]["blobs"]
                    out = [img for i in range(0, len(blobs), batch) for img in codec.decompress_batch(blobs[i:i + batch])]
                times[name][direction].append(time.perf_counter() - start)
                codec.stages = None
                splits[name][direction].append(stages.snapshot())
                outputs[name]["blobs" if direction == "compress" else "decoded"] = out
    return {name: {"compress": _pass_record(times[name]["compress"], splits[name]["compress"], pixels, len(files)),
                   "decompress": _pass_record(times[name]["decompress"], splits[name]["decompress"], pixels,
                                              len(files)),
                   **outputs[name]} for name in engines}


def _macs(bundle, originals: list[np.ndarray]) -> dict:
    from aectl.perf.macs import count_macs
    from aectl.runtime import tiling

    rule = bundle.input_rule
    sizes = []
    for a in originals:
        h, w = a.shape[:2]
        plan = tiling.plan(h, w, *tiling.choose_tile_size(h, w, rule["stride"], rule["fixed_size"]),
                           rule["stride"], rule["fixed_size"])
        sizes.extend((t.input_height, t.input_width) for t in plan)  # with their halos: what the networks run
    lat = bundle.latent_rule
    out = {}
    for role in ("encoder", "decoder"):
        if role not in bundle.manifest["files"]:
            continue
        data = bundle.read(role)
        total, detail = 0, {}
        for h, w in sizes:
            key = f"{h}x{w}"
            if key not in detail:  # counted once per input size: shape inference is the slow part
                if role == "encoder":
                    shapes = {"x": (1, 3, h, w)}
                elif lat["layout"] == "NC":
                    shapes = {"y_hat": (1, lat["channels"])}
                else:
                    s = rule["stride"]
                    shapes = {"y_hat": (1, lat["channels"], h // s, w // s)}
                counted = count_macs(data, shapes)
                detail[key] = {role: counted["total"], "by_op": counted["by_op"],
                               "elementwise_elements": counted["elementwise"]}
            total += detail[key][role]
        out[role] = {"total": total, "per_input_size": detail}
    return out


def _baselines(files: list[Path], originals: list[np.ndarray], blobs: list[bytes], codecs: tuple[str, ...],
               repeats: int) -> dict:
    """Pillow's codecs at aectl's bpp on the same pixels; their compress pass reads each file as aectl's does."""
    from aectl.runtime.metrics import baseline_at_bpp, bpp, pillow_encode

    pixels = sum(a.shape[0] * a.shape[1] for a in originals)
    out = {}
    for name in codecs:
        chosen = [baseline_at_bpp(a, name, bpp(len(b), a.shape[1], a.shape[0])) for a, b in zip(originals, blobs)]
        encoded = [pillow_encode(a, name, c["quality"]) for a, c in zip(originals, chosen)]
        pillow_encode(originals[0], name, chosen[0]["quality"])  # warm-up
        record = {"bpp": float(np.mean([c["bpp"] for c in chosen])), "psnr": float(np.mean([c["psnr"] for c in chosen])),
                  "qualities": [c["quality"] for c in chosen]}
        for direction in ("compress", "decompress"):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                if direction == "compress":
                    for p, c in zip(files, chosen):
                        pillow_encode(read_rgb(p, DEFAULT_MAX_PIXELS), name, c["quality"])
                else:
                    for data in encoded:
                        Image.open(io.BytesIO(data)).convert("RGB")
                times.append(time.perf_counter() - start)
            record[direction] = _pass_record(times, [], pixels, len(files))
        out[name] = record
    return out


def _torch_network(bundle, provider: str, threads: int):
    """TorchNetwork on the provider's device, or the reason it cannot run."""
    try:
        import torch
        from aectl.train.torch_ref import TorchNetwork
    except ImportError as exc:
        return None, f"torch not importable ({exc})"

    if provider == "cuda" and not torch.cuda.is_available():
        return None, "this torch has no usable CUDA"
    try:
        return TorchNetwork(bundle, device=provider, threads=threads), None
    except AectlError as exc:
        return None, str(exc)


def _ratio(a: dict, b: dict, key: str = "seconds") -> float:
    """How many times faster a is than b (b's seconds / a's seconds)."""
    return b[key] / a[key]


def run_bench(cfg: BenchConfig, log=lambda msg: None) -> dict:
    from aectl.runtime import Codec, load_bundle
    from aectl.runtime.metrics import bpp, check_baseline_sizes, psnr
    from aectl.runtime.providers import check_threads, import_ort

    check_threads(cfg.threads, allow_auto=False)
    if cfg.repeats < 1 or not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise AectlError("--repeats and --batch-sizes must be positive")
    if cfg.limit is not None and cfg.limit < 1:
        raise AectlError("--limit must be positive")
    unknown = set(cfg.baselines) - set(BASELINES)
    if unknown:
        raise AectlError(f"unknown baseline(s) {', '.join(sorted(unknown))}; choose from {', '.join(BASELINES)}")
    bundle = load_bundle(cfg.bundle)
    if not bundle.has_encoder:
        raise AectlError(f"bundle {cfg.bundle} is decoder-only; bench needs the encoder to make .aec files")
    files = _image_files(Path(cfg.images), cfg.limit)
    providers = _providers(cfg.provider)
    ort = import_ort()
    originals = [read_rgb(p, DEFAULT_MAX_PIXELS) for p in files]  # upright 8-bit RGB, as the codec reads them
    for name in cfg.baselines:
        check_baseline_sizes(name, list(zip(map(str, files), originals)))
    pixels = sum(a.shape[0] * a.shape[1] for a in originals)
    sizes: dict[str, int] = {}
    for a in originals:
        h, w = a.shape[:2]
        sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "onnxruntime": ort.__version__,
                    "numpy": np.__version__, "load_average_before": _loadavg()},
        "bundle": {"path": str(cfg.bundle), "model_id": bundle.model_id, "preset": bundle.manifest.get("preset"),
                   "architecture": bundle.manifest.get("architecture"),
                   "precision": {r: f.get("precision", "fp32") for r, f in bundle.manifest["files"].items()}},
        "images": {"folder": str(cfg.images), "count": len(files), "sizes": sizes},
        "macs": None,
        "providers": {},
    }
    result["images"]["megapixels"] = pixels / 1e6
    try:
        result["macs"] = _macs(bundle, originals)
    except AectlError as exc:
        result["macs"] = {"error": str(exc)}
    codecs = {}
    for provider in providers:  # a provider that cannot start fails here, in one line, before any work
        codecs[provider] = Codec(bundle, provider=provider, threads=cfg.threads)
        codecs[provider].network.session("encoder")
        codecs[provider].network.session("decoder")
    log(f"bench: {len(files)} images, providers {', '.join(providers)}, {cfg.threads} threads, "
        f"batch sizes {', '.join(map(str, cfg.batch_sizes))}, {cfg.repeats} repeats")
    first_blobs = None
    for provider in providers:
        entry: dict = {"engines": {}}
        codec = codecs[provider]
        entry["session_providers"] = codec.network.providers
        engines = {"onnxruntime": codec}
        if cfg.torch:
            net, reason = _torch_network(bundle, provider, cfg.threads)
            if net is None:
                entry["engines"]["torch"] = {"skipped": reason}
            else:
                engines["torch"] = Codec(bundle, network=net)  # on the network's device and threads
                probe = _probe_input(originals[0], bundle)
                entry["torch_vs_onnxruntime_max_diff"] = net.max_difference(codec.network, probe)
        per_engine: dict = {name: {} for name in engines}
        peaks = [_matmul_peak(provider, cfg.threads)] if cfg.peak else []
        for batch in cfg.batch_sizes:
            log(f"  {provider}: {' and '.join(engines)} at batch size {batch}")
            timed = _time_engines(engines, files, pixels, batch, cfg.repeats)
            for name, rec in timed.items():
                per_engine[name][f"batch_{batch}"] = {"compress": rec["compress"], "decompress": rec["decompress"]}
            if first_blobs is None:
                first_blobs = timed["onnxruntime"]["blobs"]
                result["rate"] = {
                    "bpp": float(np.mean([bpp(len(b), a.shape[1], a.shape[0]) for a, b in zip(originals, first_blobs)])),
                    "psnr": float(np.mean([psnr(a, to_pixels(d).rgb)
                                           for a, d in zip(originals, timed["onnxruntime"]["decoded"])]))}
        entry["engines"].update(per_engine)
        if cfg.peak:
            log(f"  {provider} matmul peak")
            peaks.append(_matmul_peak(provider, cfg.threads))
            failed = [m for m in peaks if "error" in m]
            entry["peak"] = failed[0] if failed else best_of(peaks)
        else:
            entry["peak"] = {"skipped": "not measured (--no-peak)"}
        entry["ratios"] = _ratios(entry, cfg.batch_sizes)
        entry["efficiency"] = _efficiency(entry, result["macs"], cfg.batch_sizes)
        result["providers"][provider] = entry
    if cfg.baselines:
        log("  Pillow baselines")
        result["baselines"] = _baselines(files, originals, first_blobs, tuple(cfg.baselines), cfg.repeats)
        for name, base in result["baselines"].items():
            for provider, entry in result["providers"].items():
                for bkey, timings in entry["engines"]["onnxruntime"].items():
                    for direction in ("compress", "decompress"):
                        entry["ratios"].setdefault(bkey, {})[f"{direction}_onnxruntime_over_{name}"] = \
                            _ratio(timings[direction], base[direction])
    result["machine"]["load_average_after"] = _loadavg()
    return result


def _ratios(entry: dict, batch_sizes) -> dict:
    """Speed of onnxruntime over torch (>1: onnxruntime is faster), end to end and for the network stage."""
    out: dict = {}
    ort_runs, torch_runs = entry["engines"].get("onnxruntime", {}), entry["engines"].get("torch", {})
    for batch in batch_sizes:
        key = f"batch_{batch}"
        out[key] = {}
        if key in torch_runs:
            for direction in ("compress", "decompress"):
                o, t = ort_runs[key][direction], torch_runs[key][direction]
                out[key][f"{direction}_onnxruntime_over_torch"] = _ratio(o, t)
                out[key][f"{direction}_network_onnxruntime_over_torch"] = t["stages"]["network"] / o["stages"]["network"]
    return out


def _efficiency(entry: dict, macs: dict | None, batch_sizes) -> dict:
    """Achieved MACs/s of the network stage, and as a share of the measured matmul peak."""
    if not macs or "error" in macs:
        return {}
    peak = entry.get("peak", {}).get("macs_per_s")
    out: dict = {}
    for engine, runs in entry["engines"].items():
        if "skipped" in runs:
            continue
        for batch in batch_sizes:
            rec = runs[f"batch_{batch}"]
            row = {}
            for role, direction in (("encoder", "compress"), ("decoder", "decompress")):
                seconds = rec[direction]["stages"]["network"]
                rate = macs[role]["total"] / seconds
                row[role] = {"macs": macs[role]["total"], "network_seconds": seconds, "macs_per_s": rate,
                             "percent_of_peak": 100 * rate / peak if peak else None}
            out.setdefault(engine, {})[f"batch_{batch}"] = row
    return out


def _probe_input(a: np.ndarray, bundle) -> np.ndarray:
    """A real crop (stride-aligned) of the first image, as the network input for the torch parity probe."""
    rule = bundle.input_rule
    if rule["fixed_size"]:
        s = rule["fixed_size"]
        a = np.pad(a, ((0, max(0, s - a.shape[0])), (0, max(0, s - a.shape[1])), (0, 0)), mode="edge")[:s, :s]
    else:
        s = rule["stride"]
        h, w = max(s, min(256, a.shape[0]) // s * s), max(s, min(256, a.shape[1]) // s * s)
        a = np.pad(a, ((0, max(0, h - a.shape[0])), (0, max(0, w - a.shape[1])), (0, 0)), mode="edge")[:h, :w]
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
