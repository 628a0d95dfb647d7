"""Rewrite a Q/DQ graph into the layout ONNX Runtime fuses into integer kernels on x86 (FACTS.md 8).

ONNX Runtime turns ``DQ(x) -> Conv(DQ(w), DQ(int32 bias)) -> Q`` into QLinearConv only when the conv
output is quantized too, while TensorRT wants no Q/DQ there. So, starting from the TensorRT-style
graph of a quantized model:

1. a BatchNormalization right after a quantized Conv is folded into the per-channel weight scales
   and the bias (the codes stay; a negative BN factor flips symmetric codes);
2. signed activation Q/DQ (zero point z) become uint8 with zero point z + 128: the same values,
   and ONNX Runtime's fastest x86 path (U8S8);
3. each quantized Conv / Gemm gets an int32 bias (scale s_x * s_w) and a Q/DQ on its output: with the
   downstream quantizer's own scale when the output only feeds that quantizer (then exact, also
   for 6-bit ranges whose Clip moves after the DQ), otherwise with a range calibrated on images;
4. layers listed in ``keep_float`` (e.g. depthwise convs, where int8 is slower on this runtime) keep
   their dequantized float weights: numerically the same, just not fused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graph import GraphIndex, attr, name_nodes, remove_dead_nodes, remove_unused_initializers


@dataclass
class OrtLayoutReport:
    int8_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    exact_outputs: int = 0
    shared_outputs: int = 0
    calibrated_outputs: int = 0
    folded_bn: int = 0
    # torch module whose output got a new Q/DQ (the BN folded into the conv, else the conv itself)
    # -> (scale, uint8 zero point): lets parity simulate the layout on the torch model
    output_quant: dict[str, tuple[float, int]] = field(default_factory=dict)
    _bn_of: dict[str, str] = field(default_factory=dict)


def _add_init(graph: Any, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _weight_dq(g: GraphIndex, conv: Any) -> Any | None:
    """The DequantizeLinear of a constant int8 weight feeding ``conv`` (or None)."""
    node = g.producer.get(conv.input[1]) if len(conv.input) > 1 else None
    if node is None or node.op_type != "DequantizeLinear" or g.const(node.input[0]) is None:
        return None
    return node


def _act_dq(g: GraphIndex, conv: Any) -> Any | None:
    node = g.producer.get(conv.input[0])
    if node is None or node.op_type != "DequantizeLinear" or g.is_const(node.input[0]):
        return None
    return node


def quantized_layers(proto: Any) -> list[Any]:
    """Conv / Gemm nodes whose input and weight both come from DequantizeLinear."""
    g = GraphIndex(proto.graph)
    return [n for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm") and _act_dq(g, n) is not None and _weight_dq(g, n) is not None]


def is_depthwise(proto: Any, node: Any) -> bool:
    g = GraphIndex(proto.graph)
    if node.op_type != "Conv":
        return False
    dq = _weight_dq(g, node)
    w = g.const(dq.input[0]) if dq is not None else None
    return w is not None and attr(node, "group", 1) > 1 and w.shape[1] == 1


def _per_channel(g: GraphIndex, dq: Any, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = g.const(dq.input[0])
    s = np.broadcast_to(g.const(dq.input[1]).astype(np.float32), (channels,)).copy()
    z = np.broadcast_to(g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), codes.dtype),
                        (channels,)).copy()
    return codes, s, z


def fold_batchnorm(proto: Any, report: OrtLayoutReport) -> None:
    """Step 1 of the module docstring."""
    graph = proto.graph
    g = GraphIndex(graph)
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(g.downstream(conv.output[0])) != 1:
            continue
        dq = _weight_dq(g, conv)
        vals = [g.const(i) for i in bn.input[1:5]]
        if dq is None or any(v is None for v in vals) or attr(dq, "axis", 1) not in (0, 1):
            continue
        gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
        k = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        codes, s, z = _per_channel(g, dq, len(k))
        if np.any(k < 0) and (np.any(z != 0) or codes.dtype != np.int8 or np.any(codes[k < 0] == -128)):
            continue  # flipping asymmetric codes could leave the integer range
        sign = np.where(k < 0, -1, 1).astype(codes.dtype).reshape([-1] + [1] * (codes.ndim - 1))
        bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(k))
        base = conv.name or conv.output[0]
        dq.input[0] = _add_init(graph, f"{base}_w_bn", codes * sign)
        dq.input[1] = _add_init(graph, f"{base}_ws_bn", (s * np.abs(k)).astype(np.float32))
        dq.input[2] = _add_init(graph, f"{base}_wz_bn", z)
        _set_attr(dq, "axis", 0)
        new_bias = _add_init(graph, f"{base}_b_bn", ((bias - mean) * k + beta).astype(np.float32))
        if len(conv.input) > 2:
            conv.input[2] = new_bias
        else:
            conv.input.append(new_bias)
        conv.output[0] = bn.output[0]
        report._bn_of[conv.name] = bn.name
        graph.node.remove(bn)
        report.folded_bn += 1
        g = GraphIndex(graph)


def _set_attr(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def signed_to_unsigned(proto: Any) -> None:
    """Step 2: activation Q/DQ int8 (zero point z) -> uint8 (z + 128); weights stay int8."""
    graph = proto.graph
    del graph.value_info[:]  # types change; ONNX Runtime re-infers them
    g = GraphIndex(graph)
    done: dict[str, str] = {}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        if g.is_weight_path(n.input[0]):
            continue
        z = g.const(n.input[2])
        if z is None or z.dtype != np.int8:
            continue
        if n.input[2] not in done:
            done[n.input[2]] = _add_init(graph, f"{n.input[2]}_u8", (z.astype(np.int16) + 128).astype(np.uint8))
        n.input[2] = done[n.input[2]]


def output_ranges(proto: Any, tensors: list[str], images: Any) -> dict[str, tuple[float, float]]:
    """Min / max of ``tensors`` over ``images`` (N, 3, 112, 112), by running the graph in ONNX Runtime."""
    import copy

    from onnx import helper

    from .parity import ort_session, run_onnx

    if not tensors:
        return {}
    probe = copy.deepcopy(proto)
    for t in tensors:
        probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    outs = run_onnx(ort_session(probe), images, batch_size=16, outputs=tensors)
    return {t: (float(min(o.min(), 0.0)), float(max(o.max(), 0.0))) for t, o in zip(tensors, outs)}


def _downstream_quantizer(g: GraphIndex, name: str) -> tuple[Any, Any | None] | None:
    """(Q, Clip or None) when the tensor's only consumer is a Q (possibly behind a Clip)."""
    users = g.downstream(name)
    if len(users) != 1 or name in g.graph_outputs:
        return None
    u = users[0]
    if u.op_type == "QuantizeLinear":
        return u, None
    if u.op_type == "Clip" and len(g.downstream(u.output[0])) == 1:
        q = g.downstream(u.output[0])[0]
        if q.op_type == "QuantizeLinear":
            return q, u
    return None


def _through_activation(g: GraphIndex, name: str) -> Any | None:
    """The Q behind a lone PRelu / Relu / LeakyRelu consumer (whose positive side is the identity)."""
    users = g.downstream(name)
    if len(users) != 1 or users[0].op_type not in ("PRelu", "Relu", "LeakyRelu"):
        return None
    found = _downstream_quantizer(g, users[0].output[0])
    return found[0] if found else None


def _fits(g: GraphIndex, q: Any, lo: float, hi: float) -> bool:
    """Whether [lo, hi] lies inside the (uint8) range of quantizer ``q``."""
    s, z = g.const(q.input[1]), g.const(q.input[2])
    if s is None or z is None or s.size != 1 or z.dtype != np.uint8:
        return False
    s, z = float(s), float(z)
    return (0 - z) * s <= lo and hi <= (255 - z) * s


def ort_layout(proto: Any, calib_images: Any, keep_float: set[str] | frozenset[str] = frozenset(),
               range_cache: dict[str, tuple[float, float]] | None = None) -> OrtLayoutReport:
    """Rewrite ``proto`` in place (module docstring); returns what was done per layer.

    ``range_cache`` shares calibrated conv-output ranges between layouts of the same graph."""
    report = OrtLayoutReport()
    name_nodes(proto.graph)
    fold_batchnorm(proto, report)
    signed_to_unsigned(proto)
    graph = proto.graph
    g = GraphIndex(graph)
    layers = quantized_layers(proto)
    todo, need_range = [], []
    for conv in layers:
        if conv.name in keep_float:
            dq = _weight_dq(g, conv)
            codes, s, z = _per_channel(g, dq, g.const(dq.input[0]).shape[attr(dq, "axis", 1)])
            shape = [1] * codes.ndim
            shape[attr(dq, "axis", 1)] = -1
            w = (codes.astype(np.float32) - z.reshape(shape).astype(np.float32)) * s.reshape(shape)
            conv.input[1] = _add_init(graph, f"{conv.name}_w_float", w.astype(np.float32))
            report.float_layers.append(conv.name)
            continue
        report.int8_layers.append(conv.name)
        if conv.output[0] in g.graph_outputs:  # e.g. the embedding Gemm: QGemm may output float
            todo.append((conv, "float-output"))
            continue
        down = _downstream_quantizer(g, conv.output[0])
        todo.append((conv, down))
        if down is None:
            need_range.append(conv.output[0])
    cache = range_cache if range_cache is not None else {}
    missing = [t for t in need_range if t not in cache]
    cache.update(output_ranges(proto, missing, calib_images[:32]))
    ranges = {t: cache[t] for t in need_range}
    from onnx import helper

    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    for conv, down in todo:
        out = conv.output[0]
        before[conv.name] = _quantize_bias(graph, g, conv)
        if down == "float-output":
            continue
        act_q = _through_activation(g, out) if down is None else None
        if down is not None:  # the downstream quantizer's scale: re-quantizing its grid is exact
            q, clip = down
            scale, zp = q.input[1], q.input[2]
            report.exact_outputs += 1
        elif act_q is not None and _fits(g, act_q, *ranges[out]):
            # through PReLU: exact for positives, one rounding step on a few negatives; finer than a
            # fresh calibrated range when the output fits the quantizer's range
            scale, zp = act_q.input[1], act_q.input[2]
            report.shared_outputs += 1
        else:
            lo, hi = ranges[out]
            s = np.float32(max(hi - lo, 1e-8) / 255.0)
            scale = _add_init(graph, f"{conv.name}_out_scale", s)
            zp = _add_init(graph, f"{conv.name}_out_zp", np.uint8(np.clip(np.rint(-lo / s), 0, 255)))
            report.calibrated_outputs += 1
        sv, zv = g.const(scale) if g.const(scale) is not None else graph_const(graph, scale), \
            g.const(zp) if g.const(zp) is not None else graph_const(graph, zp)
        report.output_quant[report._bn_of.get(conv.name, conv.name)] = (float(sv), int(zv))
        raw = f"{out}_float"
        conv.output[0] = raw
        nodes = [helper.make_node("QuantizeLinear", [raw, scale, zp], [f"{out}_q8"], name=f"{conv.name}_outQ"),
                 helper.make_node("DequantizeLinear", [f"{out}_q8", scale, zp], [out], name=f"{conv.name}_outDQ")]
        after[conv.name] = nodes
    ordered = []
    for n in graph.node:
        ordered.extend(before.get(n.name, []))
        ordered.append(n)
        ordered.extend(after.get(n.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    remove_dead_nodes(graph)
    remove_unused_initializers(graph)
    return report


def graph_const(graph: Any, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def _quantize_bias(graph: Any, g: GraphIndex, conv: Any) -> list[Any]:
    """int32 bias with scale s_x * s_w (zero point 0), which ONNX Runtime's QDQ fusion requires.
    Returns the new DequantizeLinear node (to be placed before ``conv``)."""
    from onnx import helper

    if len(conv.input) < 3 or not conv.input[2]:
        return []
    b = g.const(conv.input[2])
    x_dq, w_dq = _act_dq(g, conv), _weight_dq(g, conv)
    if b is None or b.ndim != 1:
        return []
    sx = float(g.const(x_dq.input[1]))
    _, sw, _ = _per_channel(g, w_dq, b.shape[0])
    scale = (sx * sw).astype(np.float32)
    codes = np.clip(np.rint(b.astype(np.float64) / scale), -2**31, 2**31 - 1).astype(np.int32)
    base = conv.name
    name = _add_init(graph, f"{base}_bias_i32", codes)
    sname = _add_init(graph, f"{base}_bias_scale", scale)
    out = f"{base}_bias_dq"
    conv.input[2] = out  # no zero point input: int32 with zero point 0
    return [helper.make_node("DequantizeLinear", [name, sname], [out], name=f"{base}_biasDQ", axis=0)]
