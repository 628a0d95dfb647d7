"""Hand-built ONNX graphs (onnx.helper) for the export tests: a residual conv block in TensorRT's
explicit-quantization layout, with switches that break one rule each."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def residual_block(*, zp_value=0, zp_type=TensorProto.INT8, act_per_channel=False, weight_axis=0,
                   conv_input_qdq=True, skip_qdq=True, qdq_conv_act=False, opset=17, fixed_batch=False,
                   ir_version=10, conv2_bias=False, mid_clip=False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    C = 4
    init, nodes = [], []

    def const(name, arr):
        init.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    np_zp = np.int8 if zp_type == TensorProto.INT8 else np.uint8
    const("s_in", np.float32(0.05))
    const("zp", np.array(zp_value, np_zp))
    const("s_act", np.full(C, 0.05, np.float32) if act_per_channel else np.float32(0.05))
    const("zp_act", np.full(C, zp_value, np_zp) if act_per_channel else np.array(zp_value, np_zp))

    def qdq(x, name, scale="s_in", zp="zp", axis=None):
        kw = {"axis": axis} if axis is not None else {}
        nodes.append(helper.make_node("QuantizeLinear", [x, scale, zp], [f"{name}_q"], name=f"{name}_Q", **kw))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", scale, zp], [f"{name}_dq"],
                                      name=f"{name}_DQ", **kw))
        return f"{name}_dq"

    def weight(name, cin):
        w = rng.integers(-31, 32, size=(C, cin, 3, 3)).astype(np.int8)
        const(f"{name}_w", w)
        if weight_axis == 0:
            const(f"{name}_ws", np.full(C, 0.01, np.float32))
            const(f"{name}_wz", np.zeros(C, np.int8))
        else:
            const(f"{name}_ws", np.full(cin, 0.01, np.float32))
            const(f"{name}_wz", np.zeros(cin, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"],
                                      [f"{name}_wdq"], name=f"{name}_wDQ", axis=weight_axis))
        return f"{name}_wdq"

    x = qdq("input", "in") if conv_input_qdq else "input"
    nodes.append(helper.make_node("Conv", [x, weight("conv1", 3), const("b1", np.zeros(C, np.float32))],
                                  ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    y = "c1"
    if qdq_conv_act:
        if mid_clip:  # a 6-bit range held inside int8: Clip(s * (qmin - zp), s * (qmax - zp)) before the Q
            nodes.append(helper.make_node("Clip", [y, const("lo", np.float32(-1.6)), const("hi", np.float32(1.55))],
                                          ["c1_clip"], name="mid_clip"))
            y = "c1_clip"
        y = qdq(y, "mid")
    nodes.append(helper.make_node("PRelu", [y, const("slope", np.full((C, 1, 1), 0.25, np.float32))], ["a1"],
                                  name="prelu1"))
    a = qdq("a1", "act", scale="s_act", zp="zp_act", axis=1 if act_per_channel else None)
    bias2 = [const("b2", np.full(C, 0.1, np.float32))] if conv2_bias else []
    nodes.append(helper.make_node("Conv", [a, weight("conv2", C), *bias2], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    skip = qdq("a1", "skip") if skip_qdq else "a1"
    nodes.append(helper.make_node("Add", ["c2", skip], ["embedding"], name="add1"))
    batch = 2 if fixed_batch else "batch"
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, C, 8, 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model
