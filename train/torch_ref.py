"""The bundle's model in torch eager, for `aectl bench`'s side-by-side comparison with onnxruntime.

The module is rebuilt from the manifest's preset and architecture parameters and its weights are loaded from
the bundle's own ONNX initializers, so torch runs exactly the weights onnxruntime runs (no checkpoint needed).
Named initializers map to state_dict keys (the exporter keeps "model.<key>"); GDN's beta and gamma are
folded by the exporter into the bias and weight of the 1x1 Conv that follows each x*x, so they are read from
those nodes in graph order and stored back through GDN's sqrt(value + pedestal) reparametrisation. Bundles of
96+ channels exported before export raised its folding limit (onnx_export.FOLD_LIMIT) compute gamma in-graph
from its raw parameter, which is then read by name like any other. Every parameter must be found, and the result is
checked against onnxruntime before it is used. fp16 and int8 bundles are refused: their rounded weights would
make another model.
"""
from __future__ import annotations

import numpy as np
import torch

from aectl.runtime.bundle import Bundle, load_bundle
from aectl.runtime.errors import AectlError
from aectl.runtime.network import Network


def _initializers(model_bytes: bytes) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    produced = {out: node for node in proto.graph.node for out in node.output}
    gdn = []
    for node in proto.graph.node:  # Conv(x*x, gamma, beta): the GDN normaliser
        if node.op_type != "Conv" or node.input[0] not in produced:
            continue
        src = produced[node.input[0]]
        if src.op_type == "Mul" and len(src.input) == 2 and src.input[0] == src.input[1]:
            # None where the graph computes the value from the raw parameter (module docstring): read by name instead.
            gdn.append((inits.get(node.input[1]), inits.get(node.input[2])))
    return inits, gdn


def build_torch_model(bundle: Bundle) -> torch.nn.Module:
    from aectl.train.layers import GDN
    from aectl.train.zoo import get_preset

    m = bundle.manifest
    try:
        arch = m.get("architecture") or {}
        if m["preset"] == "factorized":
            preset = get_preset("factorized", arch.get("quality"), (arch["n"], arch["m"]))
        else:
            preset = get_preset(m["preset"])
    except (KeyError, TypeError, AttributeError) as exc:  # the codec reads neither field, so nothing checked them
        raise AectlError(f"torch reference: the manifest of {bundle.path} lacks its preset or architecture "
                         f"({type(exc).__name__}: {exc})") from None
    model = preset.build().eval()
    state = model.state_dict()
    loaded: set[str] = set()
    gdn_modules = [mod for mod in model.modules() if isinstance(mod, GDN)]
    for role in ("encoder", "decoder"):
        if role not in m["files"]:
            raise AectlError(f"torch reference: bundle {bundle.path} has no {role}")
        precision = m["files"][role].get("precision", "fp32")
        if precision != "fp32":  # rounded weights: the module built from them would be another model
            raise AectlError(f"bundle {bundle.path} has an {precision} {role}, whose weights are rounded; the model "
                             "reads back from the fp32 bundle of the same checkpoint")
        inits, gdn = _initializers(bundle.read(role))
        for name, value in inits.items():
            key = name[len("model."):] if name.startswith("model.") else name
            if key in state and tuple(state[key].shape) == value.shape:
                state[key] = torch.from_numpy(value.copy())
                loaded.add(key)
        # GDN modules in the encoder come first in module order (analysis, then synthesis).
        mods = [g for g in gdn_modules if g.inverse == (role == "decoder")]
        if len(mods) != len(gdn):
            raise AectlError(f"torch reference: {role} has {len(gdn)} GDN nodes, the preset {len(mods)}")
        prefix = {id(mod): key for key, mod in model.named_modules()}
        for mod, (gamma, beta) in zip(mods, gdn):
            base = prefix[id(mod)]
            for name, value, param in (("gamma", gamma, mod.gamma), ("beta", beta, mod.beta)):
                if value is not None:  # folded: back through the reparametrisation
                    state[f"{base}.{name}.raw"] = torch.sqrt(torch.from_numpy(value.copy()).reshape(param.raw.shape)
                                                             + param.pedestal)
                    loaded.add(f"{base}.{name}.raw")
    needed = {k for k, _ in model.named_parameters() if not k.startswith("entropy.")}
    needed |= {k for k, _ in model.named_buffers() if not k.startswith("entropy.") and k != "latent_step"}
    missing = sorted(needed - loaded)
    if missing:
        raise AectlError(f"torch reference: weights not found in the ONNX files: {', '.join(missing[:5])}")
    model.load_state_dict(state)
    return model


class TorchNetwork(Network):
    """Network with encode/decode in torch eager (same quantisation, shape checks and entropy tables)."""

    def __init__(self, bundle: Bundle | str, device: str = "cpu", threads: int | None = None):
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        super().__init__(bundle, provider="cpu", threads=threads)
        self.device = torch.device(device)
        self.model = build_torch_model(bundle).to(self.device)
        self.torch_threads = threads

    @property
    def providers(self) -> list[str]:
        return [f"torch eager ({self.device.type})"]

    def run_device(self, role: str) -> str:
        return "cpu" if self.device.type == "cpu" else "cuda"

    def _run(self, fn, x: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            with torch.inference_mode():
                out = fn(torch.from_numpy(x).to(self.device))
                return out.float().cpu().numpy()
        finally:
            torch.set_num_threads(previous)

    def encode(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        return self._run(self.model.encode, x)

    def decode(self, y_hat: np.ndarray) -> np.ndarray:
        return self._run(lambda t: self.model.decode(t).clamp(0.0, 1.0), np.ascontiguousarray(y_hat, np.float32))

    def max_difference(self, onnx_network: Network, x: np.ndarray) -> dict:
        """|torch - onnxruntime| on x: encoder relative to the latent's largest magnitude, decoder absolute."""
        y_t, y_o = self.encode(x), onnx_network.encode(x)
        y_hat = self.dequantize(self.quantize(y_t))
        d_t, d_o = self.decode(y_hat), onnx_network.decode(y_hat)
        scale = max(1.0, float(np.abs(y_t).max()))
        return {"encoder_rel_diff": float(np.abs(y_t - y_o).max()) / scale,
                "decoder_abs_diff": float(np.abs(d_t - d_o).max())}
