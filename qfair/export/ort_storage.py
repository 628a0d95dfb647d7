"""How the ONNX Runtime layout (:mod:`qfair.export.ort_layout`) stores constants: weights of float
layers as int8 codes behind ``Cast -> Mul``, biases as int32 codes (int16 when they fit) on the
s_x * s_w grid of integer kernels, and the small helpers both need."""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import GraphIndex, attr


def add_init(graph: Any, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def weight_dq(g: GraphIndex, conv: Any) -> Any | None:
    """The DequantizeLinear of a constant int8 weight feeding ``conv`` (or None)."""
    node = g.producer.get(conv.input[1]) if len(conv.input) > 1 else None
    if node is None or node.op_type != "DequantizeLinear" or g.const(node.input[0]) is None:
        return None
    return node


def act_dq(g: GraphIndex, conv: Any) -> Any | None:
    node = g.producer.get(conv.input[0])
    if node is None or node.op_type != "DequantizeLinear" or g.is_const(node.input[0]):
        return None
    return node


def per_channel(g: GraphIndex, dq: Any, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = g.const(dq.input[0])
    s = np.broadcast_to(g.const(dq.input[1]).astype(np.float32), (channels,)).copy()
    z = np.broadcast_to(g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), codes.dtype),
                        (channels,)).copy()
    return codes, s, z


def weight_only_dequant(graph: Any, g: GraphIndex, conv: Any) -> list[Any]:
    """Feed ``conv`` its weight as ``Mul(Cast(codes), scale)`` (``Sub`` of the zero point first when it is
    not zero) instead of DequantizeLinear: step 4 of the module docstring. Returns the new nodes (to be
    placed before ``conv``)."""
    from onnx import TensorProto, helper

    dq = weight_dq(g, conv)
    axis = attr(dq, "axis", 1)
    codes = g.const(dq.input[0])
    _, s, z = per_channel(g, dq, codes.shape[axis])
    shape = [1] * codes.ndim
    shape[axis] = -1  # (C,) -> broadcast along the output-channel axis
    base = conv.name
    nodes = [helper.make_node("Cast", [dq.input[0]], [f"{base}_wf"], name=f"{base}_wCast", to=TensorProto.FLOAT)]
    if np.any(z != 0):
        zp = add_init(graph, f"{base}_wzf", z.astype(np.float32).reshape(shape))
        nodes.append(helper.make_node("Sub", [f"{base}_wf", zp], [f"{base}_wfz"], name=f"{base}_wSub"))
    weights = nodes[-1].output[0]
    raw = g.const(dq.input[1])
    if raw.ndim == 1 and raw.size == codes.shape[axis] and raw.size > 1:
        # the (C,) scale itself, reshaped in the graph: stored once when the bias also reads it
        shape_init = add_init(graph, f"{base}_wshape", np.array(shape, np.int64))
        nodes.append(helper.make_node("Reshape", [dq.input[1], shape_init], [f"{base}_wsf"], name=f"{base}_wReshape"))
        scale = f"{base}_wsf"
    else:
        scale = add_init(graph, f"{base}_wsf", s.astype(np.float32).reshape(shape))
    nodes.append(helper.make_node("Mul", [weights, scale], [f"{base}_w"], name=f"{base}_wMul"))
    conv.input[1] = f"{base}_w"
    return nodes


def quantize_bias(graph: Any, g: GraphIndex, conv: Any, as_float: bool = False
                   ) -> tuple[list[Any], np.ndarray | None]:
    """int32 bias with scale s_x * s_w (zero point 0), which ONNX Runtime's QDQ fusion requires.

    Returns the new nodes (to be placed before ``conv``) and the (C,) shift of the bias (float64: what
    the graph adds minus the float bias), or ([], None) when the layer has no constant bias. Stored
    small: a per-channel scale is a ``Mul`` of the two scales in the graph (in float32, as here), codes
    that fit int16 are stored as int16 behind a ``Cast`` (ONNX Runtime folds both when the session
    starts, so the fusion sees the usual int32 constants), and a bias whose codes are all zero is
    dropped (adding int32 zeros changes nothing). ``as_float``: for a float layer, the same values as a
    float constant (``Cast -> Mul``, folded at session start) instead of a DequantizeLinear."""
    from onnx import TensorProto, helper

    if len(conv.input) < 3 or not conv.input[2]:
        return [], None
    b = g.const(conv.input[2])
    x_dq, w_dq = act_dq(g, conv), weight_dq(g, conv)
    if b is None or b.ndim != 1 or x_dq is None or w_dq is None:
        return [], None
    sx = np.float32(g.const(x_dq.input[1]))
    sw_raw = g.const(w_dq.input[1])
    _, sw, _ = per_channel(g, w_dq, b.shape[0])
    scale = (sx * sw).astype(np.float32)  # float32 product, bit-identical to ONNX Runtime's Mul
    codes = np.clip(np.rint(b.astype(np.float64) / scale), -2**31, 2**31 - 1).astype(np.int32)
    effective = codes.astype(np.float32) * scale  # what DequantizeLinear yields, in float32
    shift = effective.astype(np.float64) - b.astype(np.float64)
    if not codes.any():
        del conv.input[2]
        return [], shift
    base = conv.name
    nodes = []
    small = np.abs(codes).max() < 2**15
    name = add_init(graph, f"{base}_bias_i16" if small else f"{base}_bias_i32",
                     codes.astype(np.int16) if small else codes)
    if small or as_float:
        to = TensorProto.FLOAT if as_float else TensorProto.INT32
        nodes.append(helper.make_node("Cast", [name], [f"{base}_bias_c"], name=f"{base}_biasCast", to=to))
        name = f"{base}_bias_c"
    if sw_raw.size == b.shape[0] and np.size(g.const(x_dq.input[1])) == 1:
        sname = f"{base}_bias_scale"
        nodes.append(helper.make_node("Mul", [x_dq.input[1], w_dq.input[1]], [sname], name=f"{base}_biasScale"))
    else:
        sname = add_init(graph, f"{base}_bias_scale", scale)
    out = f"{base}_bias_dq"
    conv.input[2] = out
    if as_float:
        nodes.append(helper.make_node("Mul", [name, sname], [out], name=f"{base}_biasMul"))
    else:  # no zero point input: int32 with zero point 0
        nodes.append(helper.make_node("DequantizeLinear", [name, sname], [out], name=f"{base}_biasDQ", axis=0))
    return nodes, shift
