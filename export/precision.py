"""Reduced-precision decoders: `aectl export --precision fp16|int8`.

Only the decoder changes. The encoder stays fp32 because its output, rounded to integer symbols, *is* the
bitstream: with an fp32 encoder a bundle of any precision writes the same .aec files as the fp32 bundle, and
files decode with any variant (the model id and entropy tables are those of the fp32 export). The decoder's
inputs and outputs stay float32, so the runtime feeds and reads it unchanged; the manifest records the
precision and the parity tolerance of each file.

- int8: static QDQ quantisation with onnxruntime.quantization.quantize_static
  (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html): per-channel int8 weights,
  uint8 activations (the U8S8 combination ORT recommends for x86), calibrated with real latents: crops of real
  photos through the fp32 encoder, quantised and dequantised as the codec does; each activation's range covers
  the 99.999th percentile of its calibration values rather than their extremes (a few outliers would otherwise
  stretch the 256 levels). The synthesis convolutions
  become QDQ Conv pairs that onnxruntime's CPU provider fuses into QLinearConv; the GDN nodes (x*x, the gamma
  convolution, sqrt, the product) are excluded and stay fp32: squares span a range 8 bits cannot hold. The
  decoder's input, integer-valued latents, is quantised to 16 bits, so the first convolution runs in float on
  int8 weights. All Q/DQ nodes are standard ONNX (opset 21 quantises to 16 bits natively; the quantizer moves
  the decoder to opset 21 either way), not onnxruntime's com.microsoft contrib ops, so the file needs no
  onnxruntime-specific operator; the contrib ops gave the same outputs at the same speed here. The output
  convolution (3 x r^2 channels before the last depth-to-space) stays fp32, as quantised networks commonly keep
  their last layer (Choi et al., "PACT", 2018; Krishnamoorthi, "Quantizing deep convolutional networks for
  efficient inference", 2018): with 12 output channels its int8 kernel ran slower than fp32 here (11.9 against
  9.4 ms, one thread, AVX-512 VNNI), and its rounding lands on the pixels. On the shipped q4 with min-max
  ranges: decoder 1.34x fp32 instead of 1.26x, PSNR loss 0.16 dB instead of 0.20 (benchmarks/results/int8-cpu.json).
- fp16: onnxruntime.transformers.float16.convert_float_to_float16 with keep_io_types, GDN nodes blocked
  (kept fp32, casts inserted around them): x*x overflows fp16 (max 65504) for activations above 256.

Tolerances per variant are declared beside the model (zoo.Preset.variant_tolerances, as optimum declares
ATOL_FOR_VALIDATION in its model configs) and checked at export on real images never used for calibration.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from aectl.runtime.errors import AectlError

CALIBRATION_CROP = 256
# Activation ranges cover this percentile of calibration values (onnxruntime's default for the method): PSNR
# loss against fp32 on kodak-dev q1 / q4 / q7 0.03 / 0.11 / 0.31 dB, against 0.05 / 0.16 / 0.41 with min-max.
CALIBRATION_PERCENTILE = 99.999


def gdn_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes implementing GDN / inverse GDN: Mul(x, x) -> Conv(gamma, beta) -> Sqrt
    [-> Reciprocal] -> Mul(x, .). Found structurally, so any model built from train.layers.GDN works."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2 or node.input[0] != node.input[1]:
            continue
        chain = [node]
        nxt = consumers.get(node.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv":
            continue
        chain.append(nxt[0])
        cur = nxt[0]
        for op in ("Sqrt", "Reciprocal", "Mul"):
            nxt = consumers.get(cur.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == op:
                chain.append(nxt[0])
                cur = nxt[0]
                if op == "Mul":
                    break
            elif op == "Reciprocal":
                continue
            else:
                break
        if chain[-1].op_type != "Mul" or len(chain) < 4:
            raise AectlError(f"GDN pattern at {node.name!r} is not Mul->Conv->Sqrt[->Reciprocal]->Mul")
        found.extend(n.name for n in chain)
    if any(not name for name in found):
        raise AectlError("GDN nodes without names cannot be excluded from conversion")
    return found


def output_conv(model: onnx.ModelProto) -> str:
    """Name of the decoder's last convolution outside GDN: the one that produces the pixels."""
    gdn = set(gdn_nodes(model))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in gdn]
    if not convs or not convs[-1]:
        raise AectlError("the decoder has no named convolution outside GDN to keep in fp32")
    return convs[-1]


def calibration_latents(encoder: bytes | str, network, images: list[np.ndarray],
                        crop: int = CALIBRATION_CROP) -> list[np.ndarray]:
    """Dequantised latents of centre crops of real images through the fp32 encoder session, one image per batch
    and all crops of one size (the smallest image's side, at most `crop`): onnxruntime's histogram calibrators,
    which the percentile method uses, stack the batches and need one shape."""
    from aectl.runtime.providers import create_session

    session = create_session(encoder, "cpu")
    side = min(crop, *(min(img.shape[:2]) for img in images)) // 16 * 16
    if side < 16:
        raise AectlError("calibration images need sides of at least 16 pixels")
    out = []
    for img in images:
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        x = img[top:top + side, left:left + side].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
        y = session.run(None, {"x": np.ascontiguousarray(x)})[0]
        out.append(network.dequantize(network.quantize(y)))
    return out


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of latent batches."""

    def __init__(self, latents: list[np.ndarray]):
        self.items = iter([{"y_hat": y} for y in latents])

    def get_next(self):
        return next(self.items, None)


def _expected_opset_upgrade(record: logging.LogRecord) -> bool:
    """Drops onnxruntime's warning that it moves the decoder to opset 21 for the 16-bit Q/DQ and that the result
    should be verified: export's parity check against torch does verify it, on images calibration never saw."""
    return "16-bit integer quantization natively" not in record.getMessage()


def quantize_int8(decoder_path: Path, out_path: Path, latents: list[np.ndarray], keep_output_conv: bool = True,
                  calibration: str = "percentile") -> dict:
    """Static QDQ int8 decoder. `keep_output_conv=False` quantises the output convolution too and
    `calibration="minmax"` takes activation ranges from the extremes: what export did before, for the
    before/after in benchmarks/int8_probe.py."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    if calibration not in ("percentile", "minmax"):
        raise ValueError(f"calibration {calibration!r}: percentile or minmax")
    percentile = calibration == "percentile"
    model = onnx.load(str(decoder_path))
    excluded = gdn_nodes(model) + ([output_conv(model)] if keep_output_conv else [])
    # The dequantised latent (the decoder's input) takes whole multiples of the step over a range of tens of
    # steps at quality 4; 8 bits over that range round them, which cost the shipped q4 1.04 dB on kodak-dev.
    # 16 bits keep them (0.11 dB lost in all, and the weights of that convolution stay int8).
    wide = {i.name: [{"quant_type": QuantType.QUInt16}] for i in model.graph.input}
    work = out_path.with_suffix(".work")
    work.mkdir(exist_ok=True)
    root = logging.getLogger()
    root.addFilter(_expected_opset_upgrade)
    try:
        # Pre-processing (shape inference, ORT's basic optimisations) as the quantisation docs recommend.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = work / "pre.onnx"
        quant_pre_process(str(decoder_path), str(pre), skip_symbolic_shape=True)
        names = {n.name for n in onnx.load(str(pre)).graph.node}
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its progress
            quantize_static(str(pre), str(out_path), Reader(latents), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=[n for n in excluded if n in names],
                            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
                            extra_options={"CalibTensorRangeSymmetric": False, "UseQDQContribOps": False,
                                           "CalibPercentile": CALIBRATION_PERCENTILE, "TensorQuantOverrides": wide})
    finally:
        root.removeFilter(_expected_opset_upgrade)
        shutil.rmtree(work, ignore_errors=True)
    quantized = onnx.load(str(out_path))
    _drop_unused_domains(quantized)
    onnx.checker.check_model(quantized, full_check=True)
    onnx.save(quantized, str(out_path))
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    dq_inputs = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    int8_convs = sum(1 for n in convs if n.input[0] in dq_inputs)
    ranges = f"percentile {CALIBRATION_PERCENTILE}" if percentile else "min-max"
    return {"precision": "int8", "method": f"static QDQ, per-channel int8 weights, uint8 activations, {ranges}",
            "calibration_batches": len(latents), "int8_convs": int8_convs, "fp32_convs": len(convs) - int8_convs,
            "fp32_nodes": "GDN and the output convolution" if keep_output_conv else "GDN",
            "uint16_tensors": sorted(wide), "opset": _opset(quantized)}


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """The quantizer's pre-processing (an onnxruntime optimisation pass) declares every operator set onnxruntime
    knows (com.microsoft.nchwc, org.pytorch.aten, ...); only the ones the nodes use stay, so the file names no
    runtime-specific domain."""
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_duplicate_casts(model: onnx.ModelProto) -> None:
    """The converter inserts one Cast per (blocked consumer, input) pair; when two blocked nodes read the same
    tensor (GDN reads x twice: x*x and x*norm) it emits identical Casts with the same name and output, which
    the checker rejects. Identical copies are dropped."""
    seen, keep = set(), []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        keep.append(node)
    keep = _bypass_round_trips(keep, {o.name for o in model.graph.output})
    # It also appends the input casts at the end; ONNX requires nodes in topological order.
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    ordered, pending = [], keep
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise AectlError("fp16 conversion produced a graph with a cycle")
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    del model.graph.value_info[:]  # stale element types of converted tensors; the checker re-infers them


def _bypass_round_trips(nodes: list, outputs: set) -> list:
    """Between two blocked nodes the converter casts fp32 -> fp16 -> fp32 (GDN's x*x would pass through fp16 and
    overflow after all). Where a Cast to fp16 feeds only Casts to fp32, both go and their consumers read the
    fp32 tensor directly."""
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in nodes if n.op_type == "Cast"}
    consumers: dict = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rename, drop = {}, set()
    for n in nodes:
        if n.op_type != "Cast" or to[n.name] != onnx.TensorProto.FLOAT16 or n.output[0] in outputs:
            continue
        users = consumers.get(n.output[0], [])
        if users and all(u.op_type == "Cast" and to[u.name] == onnx.TensorProto.FLOAT for u in users):
            drop.add(id(n))
            for u in users:
                drop.add(id(u))
                rename[u.output[0]] = n.input[0]
    kept = [n for n in nodes if id(n) not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    return kept


def convert_fp16(decoder_path: Path, out_path: Path) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(decoder_path))
    blocked = gdn_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    _drop_duplicate_casts(converted)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(out_path))
    return {"precision": "fp16", "method": "onnxruntime.transformers.float16, float32 inputs/outputs",
            "fp32_nodes": "GDN", "blocked_nodes": len(blocked)}
