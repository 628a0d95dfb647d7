"""Graph rewrites hold their numbers: PRelu -> Mul + Max (bit for bit, in ONNX Runtime), and the
weight folding's numpy QuantizeLinear == ONNX Runtime's QuantizeLinear (ties included)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qfair.export.graph import rewrite_prelu  # noqa: E402
from qfair.export.onnx_graph import quantize_np  # noqa: E402


def _run(model, x):
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-0.5, 2.0)])
def test_prelu_rewrite_is_exact(low, high):
    rng = np.random.default_rng(0)
    slope = rng.uniform(low, high, size=(6, 1, 1)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "a"], ["y"], name="p")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6, 5, 5])],
                              [numpy_helper.from_array(slope, "a")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((3, 6, 5, 5)).astype(np.float32)
    want = _run(model, x)
    assert rewrite_prelu(model.graph) == 1
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    assert np.array_equal(_run(model, x), want)


@pytest.mark.parametrize("zp_dtype", [np.int8, np.uint8])
def test_numpy_quantize_equals_onnxruntime(zp_dtype):
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.01, 0.1, size=4).astype(np.float32)
    zp = np.array([0, 3, 10, 1], zp_dtype)
    x = ((rng.integers(-150, 150, size=(4, 50)) + 0.5) * scale[:, None]).astype(np.float32)  # ties + saturation
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 50])],
                              [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(zp.dtype), [4, 50])],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert np.array_equal(quantize_np(x, scale, zp, 0), _run(model, x))
