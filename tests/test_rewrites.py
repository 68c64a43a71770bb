"""The exact graph rewrites of export/rewrites.py: same values bit for bit in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from aectl.export.rewrites import depth_to_space_as_conv_transpose


def _conv_then_shuffle(mode: str, channels: int = 6, block: int = 2) -> onnx.ModelProto:
    """Conv (3 -> channels * block^2) -> DepthToSpace, with dynamic batch, height and width."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(channels * block * block, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["u"], pads=[1, 1, 1, 1]),
         helper.make_node("DepthToSpace", ["u"], ["y"], blocksize=block, mode=mode)],
        "shuffle", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", channels, "oh", "ow"])], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("block", [2, 3])
def test_depth_to_space_becomes_an_exact_conv_transpose(block):
    original = _conv_then_shuffle("CRD", block=block)
    rewritten = _conv_then_shuffle("CRD", block=block)
    assert depth_to_space_as_conv_transpose(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "ConvTranspose"]
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 5, 7), (3, 3, 16, 9)]:
        x = rng.normal(size=shape).astype(np.float32) * 100
        expected = _run(original, x)
        assert expected.shape == (shape[0], 6, shape[2] * block, shape[3] * block)
        np.testing.assert_array_equal(_run(rewritten, x), expected)


def test_dcr_depth_to_space_is_left_alone():
    model = _conv_then_shuffle("DCR")
    assert depth_to_space_as_conv_transpose(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "DepthToSpace"]


def test_exported_decoder_has_no_depth_to_space(trained):
    _, bundle = trained["factorized"]
    ops = [n.op_type for n in onnx.load(str(bundle / "decoder.onnx")).graph.node]
    assert "DepthToSpace" not in ops and ops.count("ConvTranspose") == 4
