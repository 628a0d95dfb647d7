"""The TensorRT rule checker flags each broken rule and names the node (hand-built graphs)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402

from qfair.export.validate import check_onnx, validate_onnx  # noqa: E402
from qfair.utils.errors import ExportError  # noqa: E402

from .graphs import residual_block  # noqa: E402


def test_valid_graph_passes_and_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = residual_block()
    assert validate_onnx(model, "tensorrt") == []
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((3, 3, 8, 8), np.float32)})[0]
    assert out.shape == (3, 4, 8, 8)  # dynamic batch really works


@pytest.mark.parametrize("kwargs,rule,node", [
    ({"zp_value": 3}, "zero-point", "in_Q"),
    ({"zp_type": TensorProto.UINT8}, "int8", "in_Q"),
    ({"act_per_channel": True}, "per-tensor-activation", "act_Q"),
    ({"weight_axis": 1}, "weight-axis", "conv1_wDQ"),
    ({"conv_input_qdq": False}, "qdq-inputs", "conv1"),
    ({"skip_qdq": False}, "residual-skip", "add1"),
    ({"qdq_conv_act": True}, "conv-bn-act", "mid_Q"),
    ({"qdq_conv_act": True, "mid_clip": True}, "conv-bn-act", "mid_Q"),  # the 6-bit form: Clip before the Q
    ({"opset": 12}, "opset", ""),
    ({"fixed_batch": True}, "dynamic-batch", "input"),
])
def test_each_rule_names_the_offending_node(kwargs, rule, node):
    bad = validate_onnx(residual_block(**kwargs), "tensorrt")
    assert any(v.rule == rule and v.node == node for v in bad), bad
    with pytest.raises(ExportError, match=rule):
        check_onnx(residual_block(**kwargs), "tensorrt")


@pytest.mark.parametrize("kwargs,rule,node", [
    ({}, None, None),
    ({"skip_qdq": False}, "residual-skip", "add1"),
    ({"qdq_conv_act": True}, "conv-bn-act", "mid_Q"),
])
def test_rules_see_through_a_bias_moved_into_an_add(kwargs, rule, node):
    """The TensorRT target moves conv biases into Adds (graph.bias_as_add); the rules still hold."""
    from qfair.export.graph import bias_as_add

    model = residual_block(conv2_bias=True, **kwargs)
    assert bias_as_add(model.graph) == 2
    bad = validate_onnx(model, "tensorrt")
    assert [(v.rule, v.node) for v in bad] == ([] if rule is None else [(rule, node)])


def test_onnxruntime_rules_accept_uint8_zero_points():
    assert validate_onnx(residual_block(zp_type=TensorProto.UINT8, zp_value=3), "onnxruntime") == []


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(Exception, match="tensorrt"):
        validate_onnx(residual_block(), "coreml")


def test_dequantize_without_zero_point_takes_its_input_type():
    """A weight DequantizeLinear of int8 codes may omit its zero point (0 is the default, and the int8 type comes
    from the codes): valid for TensorRT, but was reported as "no zero point, so it is uint8". uint8 codes without
    a zero point are still refused."""
    from onnx import numpy_helper

    model = residual_block()
    dq = next(n for n in model.graph.node if n.name == "conv1_wDQ")
    del dq.input[2]
    assert validate_onnx(model, "tensorrt") == []
    init = next(t for t in model.graph.initializer if t.name == dq.input[0])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.uint8), init.name))
    assert [(v.rule, v.node) for v in validate_onnx(model, "tensorrt")] == [("int8", "conv1_wDQ")]
