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
                 shapes: list[tuple[int, int, int]] | None = None, provider: str = "cpu") -> dict:
    """Runs encoder and decoder through onnxruntime and torch; raises AectlError over tolerance."""
    net = Network(load_bundle(bundle_dir), provider=provider)
    rng = np.random.default_rng(1234)
    cases = []
    for b, h, w in shapes or parity_shapes(preset):
        x = images[:b, :, :h, :w] if images is not None else rng.random((b, 3, h, w), dtype=np.float32)
        cases.append(_compare(net, model, np.ascontiguousarray(x, dtype=np.float32)))
    worst = max(c["max_abs_diff"] for c in cases)
    report = {"provider": provider, "tolerance": preset.tolerance, "max_abs_diff": worst, "cases": cases}
    if worst > preset.tolerance:
        raise AectlError(f"parity failed: max |torch - onnxruntime| = {worst:.3g} > tolerance {preset.tolerance:g} "
                         f"({cases})")
    return report


def _compare(net: Network, model, x: np.ndarray) -> dict:
    with torch.no_grad():
        y_torch = model.encode(torch.from_numpy(x)).numpy()
        y_ort = net.encode(x)
        # Decode the same quantised latents on both sides, so the comparison is of the decoder alone.
        y_hat = net.dequantize(net.quantize(y_torch))
        x_torch = model.decode(torch.from_numpy(y_hat)).clamp(0, 1).numpy()
        x_ort = net.decode(y_hat)
    scale = max(1.0, float(np.abs(y_torch).max()))
    enc_diff = float(np.abs(y_torch - y_ort).max()) / scale
    dec_diff = float(np.abs(x_torch - x_ort).max())
    return {"shape": list(x.shape), "encoder_rel_diff": enc_diff, "decoder_abs_diff": dec_diff,
            "max_abs_diff": max(enc_diff, dec_diff)}


def verify_bundle(bundle_dir: str | Path, source: str | Path, provider: str = "cpu") -> dict:
    """`aectl verify`: the bundle must come from this checkpoint (same entropy tables) and match it numerically."""
    from aectl.export.onnx_export import entropy_tables
    from aectl.train.loop import build_from_checkpoint, load_checkpoint

    bundle = load_bundle(bundle_dir)
    model, preset = build_from_checkpoint(load_checkpoint(Path(source)))
    if entropy_tables(model) != bundle.entropy:
        raise AectlError(f"{bundle_dir} was not exported from {source} (entropy tables differ)")
    for role in bundle.manifest["files"]:
        bundle.file(role)  # hash check
    shapes = parity_shapes(preset)
    if preset.fixed_size is None:
        s = preset.stride
        shapes = shapes + [(8, 6 * s, 4 * s)]
    else:
        shapes = shapes + [(8, preset.fixed_size, preset.fixed_size)]
    return check_parity(bundle_dir, model, preset, shapes=shapes, provider=provider)


def check_decoder_file(path: Path, model, preset: Preset) -> float:
    """A single decoder file (e.g. decoder.ort) against torch on an untraced shape; raises over tolerance."""
    from aectl.runtime.providers import create_session

    session = create_session(str(path), "cpu")
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
    return diff
