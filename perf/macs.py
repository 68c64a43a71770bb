"""Multiply-accumulates of an ONNX graph at a given input size, counted from the graph itself.

The input's dynamic dimensions are fixed to the asked shape, onnx's shape inference propagates shapes through
the graph (https://onnx.ai/onnx/api/shape_inference.html), and every node that does dense multiply-accumulate
work is counted with the usual formulas (as fvcore / ptflops count convolutions):

    Conv, QLinearConv, ConvInteger:  N * C_out * H_out * W_out * (C_in / group) * k_h * k_w
    ConvTranspose:                   N * C_in * H_in * W_in * (C_out / group) * k_h * k_w
    MatMul, Gemm, MatMulInteger:     (elements of the output) * K

Element-wise nodes (GDN's x*x, sqrt, the products) are not MACs; they are listed with their element counts so
the report can say how much of the work they are. So are data-movement nodes written as convolutions: a
ConvTranspose whose weights are one-hot (export/rewrites.py: depth-to-space) multiplies by 0 and 1 only, and
counting it would flatter the MAC rate. Bias additions are not counted.
"""
from __future__ import annotations

import math

from aectl.runtime.errors import AectlError

DENSE_OPS = ("Conv", "QLinearConv", "ConvInteger", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger",
             "QLinearMatMul")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise AectlError("counting MACs needs the onnx package: pip install 'aectl[bench]'") from None
    return onnx


def _dims(type_proto) -> list[int] | None:
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return None if any(d is None for d in dims) else dims


def count_macs(model, input_shapes: dict[str, tuple[int, ...]]) -> dict:
    """MACs of one run of `model` (path, bytes or ModelProto) on inputs of the given shapes.

    Returns {"total": int, "by_op": {op: MACs}, "nodes": [{"name", "op", "macs", "output"}],
    "elementwise": number of output elements of the other nodes}. Raises AectlError when a dense node's
    shapes cannot be inferred (a count that silently skipped nodes would be wrong).
    """
    onnx = _onnx()
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    elif isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = onnx.load(str(model))
    init_names = {t.name for t in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        if inp.name not in input_shapes:
            raise AectlError(f"count_macs: no shape given for input {inp.name!r}")
        shape = input_shapes[inp.name]
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise AectlError(f"count_macs: input {inp.name!r} has rank {len(dims)}, got shape {shape}")
        for d, value in zip(dims, shape):
            d.ClearField("dim_param")
            d.dim_value = int(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise AectlError(f"count_macs: shape inference failed ({exc})".splitlines()[0]) from None
    shapes: dict[str, list[int] | None] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = _dims(vi.type)
    for t in g.initializer:
        shapes[t.name] = list(t.dims)

    weights = {t.name: t for t in g.initializer}
    nodes, by_op, elementwise = [], {}, 0
    for node in g.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type not in DENSE_OPS or _is_shuffle(node, weights):
            if out is not None:
                elementwise += math.prod(out)
            continue
        macs = _dense_macs(node, shapes, out)
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
        nodes.append({"name": node.name, "op": node.op_type, "macs": macs, "output": out})
    return {"total": sum(by_op.values()), "by_op": by_op, "nodes": nodes, "elementwise": elementwise}


def _is_shuffle(node, weights: dict) -> bool:
    """A ConvTranspose with 0/1 weights, one 1 per input channel: it moves values, it computes nothing."""
    if node.op_type != "ConvTranspose" or len(node.input) != 2 or node.input[1] not in weights:
        return False
    w = _onnx().numpy_helper.to_array(weights[node.input[1]])
    return bool(((w == 0) | (w == 1)).all() and (w.reshape(w.shape[0], -1).sum(axis=1) == 1).all())


def _dense_macs(node, shapes: dict, out: list[int] | None) -> int:
    def need(name: str) -> list[int]:
        dims = shapes.get(name)
        if dims is None:
            raise AectlError(f"count_macs: no inferred shape for {name!r} (input of {node.op_type} {node.name!r})")
        return dims

    attrs = {a.name: a for a in node.attribute}
    if out is None:
        raise AectlError(f"count_macs: no inferred shape for the output of {node.op_type} {node.name!r}")
    if node.op_type in ("Conv", "ConvInteger"):
        w = need(node.input[1])
        return math.prod(out) * (w[1]) * math.prod(w[2:])  # w[1] is C_in / group already
    if node.op_type == "QLinearConv":
        w = need(node.input[3])
        return math.prod(out) * w[1] * math.prod(w[2:])
    if node.op_type == "ConvTranspose":
        x, w = need(node.input[0]), need(node.input[1])
        return math.prod(x) * (w[1]) * math.prod(w[2:])  # w[1] is C_out / group
    a = need(node.input[0])
    if node.op_type == "Gemm" and "transA" in attrs and attrs["transA"].i:
        return math.prod(out) * a[-2]
    return math.prod(out) * a[-1]
