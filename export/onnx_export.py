"""Checkpoint -> bundle: encoder.onnx + decoder.onnx (self-contained) + manifest.json.

Uses the dynamo-based torch.onnx exporter with explicit dynamic shapes: batch always, and height/width as
multiples of the model's stride for fully convolutional models. The bundle is assembled in a temporary folder
next to the destination, checked (onnx.checker, then onnxruntime against torch on shapes never traced) and
only then renamed into place, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import torch

from aectl.export.entropy_classes import fit_classes
from aectl.export.graphs import DecoderGraph, EncoderGraph
from aectl.export.request import CLASS_PHOTOS, VARIANT_PHOTOS, check_export_request, given_folder
from aectl.export.rewrites import depth_to_space_as_conv_transpose
from aectl.export.tables import build_tables
from aectl.runtime.bundle import (FORMAT, FORMAT_VERSION, MANIFEST, MAX_TABLE_ENTRIES, bundle_folder,
                                  entropy_digest, sha256_file, table_entries)
from aectl.runtime.errors import AectlError
from aectl.train.entropy import TAIL_MASS
from aectl.train.checkpoint import build_from_checkpoint, entropy_fitted, load_checkpoint, training_data
from aectl.train.zoo import Preset

TRACE_BATCH = 2
MAX_SIDE = 1 << 16
# Elements a constant computation may take or make and still be folded at export. The exporter's own pass stops
# at 8192 inputs, which from 96 channels left GDN's C x C gamma computed in the graph from its raw parameter;
# 2**22 folds it up to 2048 channels, so every runtime gets plain Conv weights, as onnxruntime made at load.
FOLD_LIMIT = 1 << 22


def _dynamic_shapes(preset: Preset) -> tuple[dict, dict]:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if preset.fixed_size is not None:
        return {"x": {0: batch}}, {"y_hat": {0: batch}}
    h = torch.export.Dim("h", min=1, max=MAX_SIDE // preset.stride)
    w = torch.export.Dim("w", min=1, max=MAX_SIDE // preset.stride)
    return ({"x": {0: batch, 2: preset.stride * h, 3: preset.stride * w}},
            {"y_hat": {0: batch, 2: h, 3: w}})


def _export_graph(module: torch.nn.Module, example: torch.Tensor, in_name: str, out_name: str,
                  dynamic: dict, path: Path) -> None:
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[in_name],
                                        output_names=[out_name], dynamic_shapes=dynamic, external_data=False,
                                        verbose=False)
        except Exception as exc:
            if _interrupted(exc):  # torch.export wraps a Ctrl-C or SIGTERM in its own error: an internal error
                raise KeyboardInterrupt from None
            raise
        onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    program.save(str(path), external_data=False)  # one self-contained file, no .onnx.data beside it
    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise AectlError(f"{path.name}: exporter left external data; the bundle must be self-contained")
    onnx.checker.check_model(model, full_check=True)


def _interrupted(exc: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt (the CLI raises one for SIGTERM too) is in an exception's chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class _quiet_exporter:
    """The exporter logs its progress at INFO/WARNING; keep the CLI's output to what we print."""

    def __enter__(self):
        self.loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


MAX_FIT_IMAGES = 64
FIT_SIDE = 1024


def _function_bytes(model: onnx.ModelProto) -> bytes:
    """The graph as a function: nodes, weights, inputs and outputs, without what the exporter adds for people
    (torch's stack traces and module names per node, its shape constraints, whose order varies from one Python
    process to the next, its version), so the same weights always give the same bytes."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.producer_version = bare.doc_string = bare.graph.doc_string = ""
    del bare.metadata_props[:], bare.graph.metadata_props[:], bare.graph.value_info[:]
    for node in bare.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    return bare.SerializeToString(deterministic=True)


def _model_id(encoder: onnx.ModelProto, decoder: onnx.ModelProto, tables: dict) -> str:
    """Derived from both graphs as traced from torch and the entropy tables: anything that changes the bitstream
    changes the id, and exporting the same checkpoint again gives the same id. The exact rewrites
    (export/rewrites.py) come after, so they leave the id as it was."""
    digest = hashlib.sha256()
    for part in (_function_bytes(encoder), _function_bytes(decoder), json.dumps(tables, sort_keys=True).encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:32]


def _stamp(path: Path, model_id: str, tables: dict) -> None:
    """The model id and the entropy tables' digest in the file's metadata: `aectl verify` holds the manifest to
    them (an edited model_id or classified table verified "ok", then failed to decode the model's files)."""
    model = onnx.load(str(path))
    props = {"aectl.model_id": model_id, "aectl.entropy_sha256": entropy_digest(tables)}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _rewrite(path: Path) -> None:
    """Apply the exact rewrites (export/rewrites.py); parity is checked on the rewritten graphs."""
    model = onnx.load(str(path))
    if depth_to_space_as_conv_transpose(model):
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))


def entropy_tables(model) -> dict:
    pmf = model.entropy.pmf_tables()
    return build_tables(pmf["pmf"].numpy(), pmf["offset"].numpy(), pmf["length"].numpy(), pmf["medians"].numpy(),
                        float(model.latent_step), TAIL_MASS)


def export_bundle(source: str | Path, out_dir: str | Path, force: bool = False,
                  parity_images: np.ndarray | None = None, decoder_only: bool = False, ort: bool = False,
                  precision: str = "fp32", calibration: str | Path | None = None, entropy_classes: int = 0,
                  log=print) -> dict:
    """Export a run directory's latest checkpoint (or a checkpoint file) to a verified bundle.

    decoder_only: drop the encoder after the checks (an edge bundle). ort: also write decoder.ort.
    precision: fp32, or fp16 / int8 for the decoder (export/precision.py); int8 calibrates on real images from
    `calibration` (default: the run's training data folder).
    entropy_classes: fit that many classified entropy tables (export/entropy_classes.py) on the same photos;
    0 keeps the learned per-channel tables alone.
    """
    out_dir = Path(out_dir)
    check_export_request(source, out_dir, force, precision, ort, calibration, entropy_classes)
    ckpt = load_checkpoint(Path(source))
    model, preset = build_from_checkpoint(ckpt, source)
    if not preset.rate_distortion and not entropy_fitted(ckpt):
        # a seed preset's density is fitted after its last step: before it, the tables code ~8x larger files
        raise AectlError(f"{source}: the run stopped (step {ckpt.get('step')}) before its entropy model was fitted "
                         "at the end of training; finish it first: aectl train --out RUN --resume")
    if precision == "int8" and preset.name.startswith("seed"):  # failed inside onnxruntime or on a missing node
        raise AectlError(f"--precision int8 is made for the factorized models' decoders, not {preset.name}; "
                         "use fp16 or fp32")
    if entropy_classes and preset.fixed_size is not None:  # one latent vector per image: no positions to classify
        raise AectlError(f"--entropy-classes {entropy_classes}: {preset.name} takes a fixed input size, and class "
                         "maps are for fully convolutional models; give 0")
    photos = variant_images(ckpt, calibration) if precision != "fp32" else None
    side = preset.fixed_size or 4 * preset.stride
    example = torch.rand(TRACE_BATCH, 3, side, side, generator=torch.Generator().manual_seed(0))
    enc_dyn, dec_dyn = _dynamic_shapes(preset)
    with torch.no_grad():
        latent_example = model.encode(example)
    tables = entropy_tables(model)
    _check_table_size(tables, entropy_classes)  # before any graph is exported or class fitted

    with bundle_folder(out_dir, force, source=source) as tmp:
        _export_graph(EncoderGraph(model), example, "x", "y", enc_dyn, tmp / "encoder.onnx")
        _export_graph(DecoderGraph(model), latent_example, "y_hat", "x_hat", dec_dyn, tmp / "decoder.onnx")
        if entropy_classes:
            symbols, folder = _fit_symbols(model, preset, ckpt, calibration)
            tables["classes"] = fit_classes(symbols, tables, entropy_classes)
            tables["classes"]["fit"]["data"] = folder
            kept = tables["classes"]["count"]
            unused = f" ({entropy_classes - kept} of the {entropy_classes} asked for went unused)" \
                if kept < entropy_classes else ""
            log(f"fitted {kept} entropy classes{unused} on {len(symbols)} images from {folder}")
        enc_proto, dec_proto = onnx.load(str(tmp / "encoder.onnx")), onnx.load(str(tmp / "decoder.onnx"))
        model_id = _model_id(enc_proto, dec_proto, tables)
        if ort:  # the mobile file keeps the traced DepthToSpace, which NNAPI and CoreML take (ConvTranspose not)
            shutil.copyfile(tmp / "decoder.onnx", tmp / "decoder.traced.onnx")
            _stamp(tmp / "decoder.traced.onnx", model_id, tables)
        for name in ("encoder.onnx", "decoder.onnx"):
            _rewrite(tmp / name)
            _stamp(tmp / name, model_id, tables)
        manifest = build_manifest(ckpt, preset, model, tables, model_id, tmp, enc_proto)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

        from aectl.export.parity import check_parity
        report = check_parity(tmp, model, preset, images=parity_images)
        manifest["parity"] = report
        for role in manifest["files"]:
            manifest["files"][role]["precision"] = "fp32"
        if precision != "fp32":
            manifest["files"]["decoder"] = _reduce_decoder(tmp, model, preset, precision, photos, model_id, tables)
            dec = manifest["files"]["decoder"]
            log(f"{precision} decoder: {dec['bytes']} B (fp32 {dec['fp32_bytes']} B); max |torch fp32 - "
                f"{precision}| = {dec['parity']['max_abs_diff']:.2e}, least PSNR {dec['parity']['min_psnr_db']:.1f} dB")
            (tmp / "decoder.fp32.onnx").unlink()
        if ort:
            manifest["files"]["decoder_ort"] = _add_ort_decoder(tmp, model, preset)
            (tmp / "decoder.traced.onnx").unlink()
        if decoder_only:
            (tmp / "encoder.onnx").unlink()
            del manifest["files"]["encoder"]
            manifest["decoder_only"] = True
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # The fp32 graphs' parity; a reduced decoder's own check (logged above) is added, so that the last line
    # never reports only the figure of a decoder the bundle no longer holds.
    parity = f"parity max |torch - onnxruntime| = {report['max_abs_diff']:.2e} <= {report['tolerance']:.0e}"
    if precision != "fp32":
        dec = manifest["files"]["decoder"]["parity"]
        parity = (f"fp32 {parity}; {precision} decoder max |torch fp32 - {precision}| = {dec['max_abs_diff']:.2e} "
                  f"<= {dec['tolerance']['max_abs_diff']:g}")
    log(f"wrote {out_dir} (model {model_id}); {parity}")
    return manifest


def _fit_symbols(model, preset: Preset, ckpt: dict, calibration) -> tuple[list[np.ndarray], str]:
    """Integer latent symbols of real photos (centre crops of at most FIT_SIDE pixels a side), as the runtime
    would quantise them, for fitting the classified entropy tables. Default folder: the run's training data."""
    from aectl.train.data import find_photos, load_rgb

    folder = photo_folder(calibration, ckpt, "--calibration", CLASS_PHOTOS)
    files = find_photos(folder, *_photo_source(calibration, "--calibration"))[:MAX_FIT_IMAGES]
    if not files:
        raise AectlError(f"--calibration {folder}: no images found")
    symbols = []
    for path in files:
        img = load_rgb(path, 4 * preset.stride)
        h, w = (min(FIT_SIDE, side) // preset.stride * preset.stride for side in img.shape[:2])
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        x = torch.from_numpy(img[top:top + h, left:left + w].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            symbols.append(model.quantize(model.encode(x))[0].to(torch.int32).numpy())
    return symbols, str(folder)


def _check_table_size(tables: dict, classes: int) -> None:
    """The runtime refuses a manifest whose tables pass its cap (runtime/bundle.py MAX_TABLE_ENTRIES): a model of
    thousands of channels with 64 classes was exported whole, its manifest then refused at every use."""
    if table_entries(tables["cdfs"], classes) > MAX_TABLE_ENTRIES:
        widest = max(len(cdf) for cdf in tables["cdfs"])
        raise AectlError(f"{len(tables['cdfs'])} channels x tables of up to {widest} entries x {1 + classes} table "
                         f"sets pass the runtime's {MAX_TABLE_ENTRIES} entries; give fewer --entropy-classes")


def _photo_source(given: str | Path | None, option: str) -> tuple[str, str]:
    """How errors name a folder of real photos, and what they suggest: the flag given, or the run's data."""
    return (option, "") if given else ("the run's training data", f"; pass {option} DIR")


def photo_folder(given: str | Path | None, ckpt: dict, option: str, why: str) -> Path:
    """The folder of real photos passed as `option`, or else the run's training data; errors name which."""
    if given is not None:
        return given_folder(given, option, why)
    folder = training_data(ckpt.get("config", {}))
    if not folder:
        raise AectlError(f"{why}, and the checkpoint does not record its training data: pass {option} DIR")
    if folder == "stl10":  # the data set, not a folder: ./stl10 of the working folder was read instead
        raise AectlError(f"{why}, and the run trained on STL10, not on a folder of photos: pass {option} DIR")
    if not Path(folder).is_dir():
        raise AectlError(f"the run's training data {folder} is not a folder here ({why}): pass {option} DIR")
    return Path(folder)


def variant_images(ckpt: dict, calibration: str | Path | None, option: str = "--calibration") -> dict:
    """Real photos for a reduced-precision decoder: every other file calibrates (int8), the rest check parity,
    so parity is never measured on calibration images. Default folder: the run's training data. `option`
    names the command's flag for the folder in errors."""
    from aectl.train.data import find_photos, load_rgb

    folder = photo_folder(calibration, ckpt, option, VARIANT_PHOTOS)
    files = find_photos(folder, *_photo_source(calibration, option))
    if len(files) < 4:
        where = f"{option} {folder}" if calibration else f"the run's training data {folder}"  # named an unused flag
        raise AectlError(f"{where}: found {len(files)} image{'s' * (len(files) != 1)}, need at least 4"
                         f"{'' if calibration else f'; pass {option} DIR'}")
    return {"folder": str(folder), "calibrate": [load_rgb(p, 64) for p in files[0::2][:32]],
            "check": [load_rgb(p, 64) for p in files[1::2][:6]],
            "calibration_files": [p.name for p in files[0::2][:32]]}


def _reduce_decoder(folder: Path, model, preset: Preset, precision: str, images: dict, model_id: str,
                    tables: dict) -> dict:
    """Replace decoder.onnx by its fp16 or int8 variant, checked against torch; returns its files entry."""
    from aectl.export.parity import check_variant
    from aectl.export.precision import calibration_latents, convert_fp16, quantize_int8
    from aectl.runtime.network import Network

    fp32 = folder / "decoder.fp32.onnx"
    (folder / "decoder.onnx").rename(fp32)
    target = folder / "decoder.onnx"
    if precision == "int8":
        network = Network(_manifest_only_bundle(folder), "cpu")  # its quantize/dequantize only
        latents = calibration_latents(str(folder / "encoder.onnx"), network, images["calibrate"])
        info = quantize_int8(fp32, target, latents)
        info["calibration"] = {"folder": images["folder"], "files": images["calibration_files"]}
    else:
        info = convert_fp16(fp32, target)
    _stamp(target, model_id, tables)
    report = check_variant(target, model, preset, precision, images["check"])
    return {"path": "decoder.onnx", "sha256": sha256_file(target), "bytes": target.stat().st_size,
            "precision": precision, "fp32_bytes": fp32.stat().st_size, "conversion": info,
            "tolerance": report["tolerance"], "parity": report}


def _manifest_only_bundle(folder: Path):
    from aectl.runtime.bundle import Bundle

    return Bundle(folder, json.loads((folder / MANIFEST).read_text()))


def _add_ort_decoder(folder: Path, model, preset: Preset) -> dict:
    """Convert the traced decoder (decoder.traced.onnx, before the rewrites) to decoder.ort and hold it to the
    same parity tolerance against torch."""
    from aectl.export.ort_format import LEVEL, convert_to_ort
    from aectl.export.parity import check_decoder_file

    convert_to_ort(folder / "decoder.traced.onnx", folder / "decoder.ort")
    diff = check_decoder_file(folder / "decoder.ort", model, preset)["max_abs_diff"]
    return {"path": "decoder.ort", "precision": "fp32", "sha256": sha256_file(folder / "decoder.ort"),
            "bytes": (folder / "decoder.ort").stat().st_size, "optimization_level": LEVEL, "max_abs_diff": diff}


def build_manifest(ckpt: dict, preset: Preset, model, tables: dict, model_id: str, folder: Path,
                   encoder_proto: onnx.ModelProto) -> dict:
    opset = next((o.version for o in encoder_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    history = ckpt.get("history") or [{}]
    run = ckpt.get("run", {})
    conv = preset.fixed_size is None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "preset": preset.name,
        "architecture": {"class": type(model).__name__, **preset.params},
        "description": preset.description,
        "input": {"layout": "NCHW", "dtype": "float32", "channels": 3, "value_range": [0.0, 1.0],
                  "fixed_size": preset.fixed_size, "stride": preset.stride,
                  "rule": (f"H and W multiples of {preset.stride}" if conv
                           else f"exactly {preset.fixed_size}x{preset.fixed_size}; larger images are tiled")},
        "latent": {"layout": "NCHW" if conv else "NC", "channels": model.latent_channels,
                   "rule": f"(N, {model.latent_channels}, H/{preset.stride}, W/{preset.stride})" if conv
                   else f"(N, {model.latent_channels})"},
        "dynamic_axes": {"x": ["batch", "height", "width"] if conv else ["batch"],
                         "y_hat": ["batch", "h", "w"] if conv else ["batch"]},
        "files": {role: {"path": f"{role}.onnx", "sha256": sha256_file(folder / f"{role}.onnx"),
                         "bytes": (folder / f"{role}.onnx").stat().st_size} for role in ("encoder", "decoder")},
        "opset": opset,
        "onnx_ir_version": encoder_proto.ir_version,
        "exporter": f"torch {torch.__version__} (dynamo)",
        "tolerance": preset.tolerance,
        "entropy": tables,
        "training": {"command": run.get("command"), "resumed_with": run.get("resumed_with", []),
                     "data": ckpt["config"].get("data"), "seed": ckpt["config"].get("seed"),
                     "steps": ckpt.get("step"), "batch_size": run.get("batch_size"), "lr": run.get("lr"),
                     "crop": ckpt["config"].get("crop") or preset.crop, "validation": run.get("val"), "metrics": history[-1]},
    }
