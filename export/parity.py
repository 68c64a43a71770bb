"""torch vs onnxruntime on shapes the exporter never traced. The exporter's own `verify=True` only logs a
warning; this check is ours and refuses a bundle whose largest difference exceeds the preset's tolerance
(stated in the manifest; 1e-4 on [0, 1] images for fp32)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aectl.runtime.errors import AectlError
from aectl.runtime.network import Network
from aectl.runtime.bundle import load_bundle
from aectl.runtime.providers import provider_name
from aectl.train.zoo import Preset

BATCHES = (1, 3)


def parity_shapes(preset: Preset) -> list[tuple[int, int, int]]:
    """(batch, H, W) cases: batch sizes other than the traced 2, and sizes other than the traced 4*stride."""
    if preset.fixed_size is not None:
        s = preset.fixed_size
        return [(b, s, s) for b in BATCHES]
    s = preset.stride
    return [(1, 5 * s, 3 * s), (3, 2 * s, 7 * s)]


def check_parity(bundle_dir: str | Path, model, preset: Preset, images: np.ndarray | None = None,
                 shapes: list[tuple[int, int, int]] | None = None, provider: str = "cpu", decoder: bool = True) -> dict:
    """Runs encoder and decoder through onnxruntime and torch; raises AectlError over tolerance.
    decoder=False checks the encoder alone (a reduced-precision decoder has its own check, check_variant)."""
    net = Network(load_bundle(bundle_dir), provider=provider)
    rng = np.random.default_rng(1234)
    cases = []
    for b, h, w in shapes or parity_shapes(preset):
        x = images[:b, :, :h, :w] if images is not None else rng.random((b, 3, h, w), dtype=np.float32)
        cases.append(_compare(net, model, np.ascontiguousarray(x, dtype=np.float32), decoder))
    worst_case = max(cases, key=lambda c: c["max_abs_diff"])
    worst = worst_case["max_abs_diff"]
    ran = ", ".join(dict.fromkeys(provider_name(ep) for ep in net.providers))  # as the sessions ran
    report = {"provider": ran, "tolerance": preset.tolerance, "max_abs_diff": worst, "cases": cases}
    if worst > preset.tolerance:
        raise AectlError(f"parity failed: max |torch - onnxruntime| = {worst:.3g} > tolerance {preset.tolerance:g} "
                         f"(input shape {worst_case['shape']})")
    return report


def _compare(net: Network, model, x: np.ndarray, decoder: bool = True) -> dict:
    with torch.no_grad():
        y_torch = model.encode(torch.from_numpy(x)).numpy()
        scale = max(1.0, float(np.abs(y_torch).max()))
        enc_diff = float(np.abs(y_torch - net.encode(x)).max()) / scale
        dec_diff = 0.0
        if decoder:  # the same quantised latents on both sides, so the comparison is of the decoder alone
            y_hat = net.dequantize(net.quantize(y_torch))
            x_torch = model.decode(torch.from_numpy(y_hat)).clamp(0, 1).numpy()
            dec_diff = float(np.abs(x_torch - net.decode(y_hat)).max())
    return {"shape": list(x.shape), "encoder_rel_diff": enc_diff, "decoder_abs_diff": dec_diff,
            "max_abs_diff": max(enc_diff, dec_diff)}


def _not_exported_from(bundle, bundle_dir, source, ckpt: dict) -> str:
    """Why a bundle's tables differ from a run's: an export of an earlier step of this run, which has trained on
    since (the same command started both), or a bundle of another run."""
    training = bundle.manifest.get("training") or {}
    started_by = training.get("command")
    same_run = started_by and started_by == (ckpt.get("run") or {}).get("command")
    if same_run and training.get("steps") != ckpt.get("step"):
        return (f"{bundle_dir} was exported at step {training.get('steps')}; {source} has trained on to step "
                f"{ckpt.get('step')} since, so it no longer holds that bundle's weights: export it again")
    return f"{bundle_dir} was not exported from {source} (entropy tables differ)"


def verify_bundle(bundle_dir: str | Path, source: str | Path, provider: str = "cpu",
                  images: str | Path | None = None) -> dict:
    """`aectl verify`: the bundle must come from this checkpoint (same entropy tables) and match it numerically,
    within the fp32 tolerance or, for an fp16 / int8 decoder, that precision's tolerance on real photos
    (`images`, default: the run's training data) as at export."""
    from aectl.export.onnx_export import entropy_tables, variant_images
    from aectl.runtime.providers import resolve
    from aectl.train.checkpoint import build_from_checkpoint, load_checkpoint

    provider = resolve(provider)  # every check on one provider, and the report names it ("auto" did)
    bundle = load_bundle(bundle_dir)
    ckpt = load_checkpoint(Path(source))
    model, preset = build_from_checkpoint(ckpt, source)
    learned = {k: v for k, v in bundle.entropy.items() if k != "classes"}  # classes are fitted, not learned
    if entropy_tables(model) != learned:
        raise AectlError(_not_exported_from(bundle, bundle_dir, source, ckpt))
    for role in bundle.manifest["files"]:
        bundle.file(role)  # hash check
        _check_stamps(bundle, role)  # the hash-protected file must belong to this manifest's model and tables
    shapes = parity_shapes(preset)
    if preset.fixed_size is None:
        s = preset.stride
        shapes = shapes + [(8, 6 * s, 4 * s)]
    else:
        shapes = shapes + [(8, preset.fixed_size, preset.fixed_size)]
    precision = bundle.manifest["files"][bundle.decoder_role].get("precision", "fp32")
    if precision != "fp32" and precision not in preset.variant_tolerances:  # export never makes one
        raise AectlError(f"{bundle_dir}: the manifest says the decoder is {precision}, a precision this preset is "
                         f"not exported at (fp32, {', '.join(preset.variant_tolerances)})")
    actual = graph_precision(bundle.file(bundle.decoder_role, verify=False))  # its hash was checked above
    if actual is not None and actual != precision:  # a claim verify repeated as "ok: int8 decoder" unchecked
        raise AectlError(f"{bundle_dir}: the manifest says the decoder is {precision}, but "
                         f"{bundle.manifest['files'][bundle.decoder_role]['path']} is an {actual} graph")
    if bundle.has_encoder:
        report = check_parity(bundle_dir, model, preset, shapes=shapes, provider=provider,
                              decoder=precision == "fp32")
        report["checked"] = "encoder and decoder" if precision == "fp32" else "encoder"
    else:  # a decoder-only bundle: its decoder file alone
        report = {"provider": provider, "tolerance": preset.tolerance, "max_abs_diff": 0.0, "cases": [],
                  "checked": "decoder"}
        if precision == "fp32":
            result = check_decoder_file(bundle.file(bundle.decoder_role), model, preset, provider)
            diff = result["max_abs_diff"]
            report.update(max_abs_diff=diff, provider=result["provider"],
                          cases=[{"file": bundle.manifest["files"][bundle.decoder_role]["path"], "max_abs_diff": diff}])
    if precision != "fp32":
        report["decoder"] = check_variant(bundle.file("decoder"), model, preset, precision,
                                          variant_images(ckpt, images, "--images")["check"], provider=provider)
    checked = "decoder" if precision != "fp32" else bundle.decoder_role
    if "decoder_ort" in bundle.manifest["files"] and checked != "decoder_ort":  # shipped too: said "ok" unchecked
        report["decoder_ort"] = {"file": bundle.manifest["files"]["decoder_ort"]["path"],
                                 **check_decoder_file(bundle.file("decoder_ort"), model, preset, provider),
                                 "tolerance": preset.tolerance}
    return report


def graph_precision(path: Path) -> str | None:
    """What an ONNX decoder really is: int8 (QDQ with 8-bit weights), fp16 (half-precision weights) or fp32;
    None for a file that is not ONNX (decoder.ort)."""
    import onnx

    if path.suffix != ".onnx":
        return None
    model = onnx.load(str(path), load_external_data=False)
    types = {t.data_type for t in model.graph.initializer}
    if types & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8} or \
            any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"


def _check_stamps(bundle, role: str) -> None:
    """Export stamps every ONNX file with the model id (and the entropy section's digest); a manifest edited
    there (model_id, classified tables) verified "ok" and then could not decode its own model's files."""
    import onnx

    from aectl.runtime.bundle import check_stamps
    from aectl.runtime.onnx_guard import is_ort_format

    path = bundle.file(role, verify=False)
    with open(path, "rb") as fh:  # its first bytes tell, as the runtime tells (an ONNX graph may be named .bin)
        if is_ort_format(fh.read(8)):
            return
    model = onnx.load(str(path), load_external_data=False)
    check_stamps(bundle, path.name, {p.key: p.value for p in model.metadata_props})


def _ran_on(session) -> str:
    """aectl's name of the provider a session runs on: what verify reports, read from the session rather than
    repeated from the request, so a check that ran elsewhere than asked would say so (create_session holds each
    session to the asked provider; the decoder-only and variant checks once ran on the CPU whatever was asked)."""
    return provider_name(session.get_providers()[0])


def check_decoder_file(path: Path, model, preset: Preset, provider: str = "cpu") -> dict:
    """A single decoder file (e.g. decoder.ort) against torch on an untraced shape; raises over tolerance.
    Returns its max_abs_diff and the provider it ran on."""
    from aectl.runtime.providers import create_session

    session = create_session(str(path), provider)
    rng = np.random.default_rng(99)
    b, h, w = parity_shapes(preset)[-1]
    with torch.no_grad():
        y = model.encode(torch.from_numpy(rng.random((b, 3, h, w), dtype=np.float32)))
        y_hat = model.dequantize(model.quantize(y))
        expected = model.decode(y_hat).clamp(0, 1).numpy()
    got = session.run(None, {"y_hat": y_hat.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > preset.tolerance:
        raise AectlError(f"{path.name}: max |torch - onnxruntime| = {diff:.3g} > tolerance {preset.tolerance:g}")
    return {"max_abs_diff": diff, "provider": _ran_on(session)}


def check_variant(path: Path, model, preset: Preset, precision: str, images: list[np.ndarray],
                  crop: int = 256, provider: str = "cpu") -> dict:
    """A reduced-precision decoder file against the fp32 torch decoder on real latents: centre crops of real
    images (never the calibration images) through torch's encoder, quantised as the codec does. Raises
    AectlError over the preset's tolerance for that precision (zoo.Preset.variant_tolerances)."""
    from aectl.runtime.providers import create_session

    tol = preset.variant_tolerances[precision]
    session = create_session(str(path), provider)
    worst, psnrs, cases = 0.0, [], []
    for img in images:
        h, w = (min(crop, img.shape[0]) // preset.stride * preset.stride,
                min(crop, img.shape[1]) // preset.stride * preset.stride)
        if preset.fixed_size is not None:
            h = w = preset.fixed_size
        if h < preset.stride or w < preset.stride or img.shape[0] < h or img.shape[1] < w:
            continue
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        x = np.ascontiguousarray(img[top:top + h, left:left + w].transpose(2, 0, 1)[None], np.float32) / 255
        with torch.no_grad():
            y_hat = model.dequantize(model.quantize(model.encode(torch.from_numpy(x))))
            expected = model.decode(y_hat).clamp(0, 1).numpy()
        got = session.run(None, {"y_hat": y_hat.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        mse = float(np.mean((got.astype(np.float64) - expected) ** 2))
        psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
        worst, psnrs = max(worst, diff), psnrs + [psnr]
        cases.append({"shape": list(x.shape), "max_abs_diff": diff, "psnr_db": psnr})
    if not cases:
        raise AectlError("variant parity: no image large enough to check")
    report = {"precision": precision, "reference": "fp32 torch decoder", "provider": _ran_on(session),
              "tolerance": tol, "max_abs_diff": worst, "min_psnr_db": min(psnrs), "cases": cases}
    if worst > tol["max_abs_diff"] or min(psnrs) < tol["min_psnr_db"]:
        raise AectlError(f"{precision} parity failed: max |torch fp32 - {precision}| = {worst:.3g} (tolerance "
                         f"{tol['max_abs_diff']:g}), least PSNR {min(psnrs):.1f} dB (tolerance {tol['min_psnr_db']:g} dB)")
    return report
