"""Rewrite a Q/DQ graph into the layout ONNX Runtime fuses into integer kernels on x86 (README references [8]).

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
4. layers listed in ``keep_float`` (e.g. depthwise convs, where int8 is slower on this runtime) run a
   float convolution on weights stored as int8 codes and dequantized by ``Cast -> Mul`` (the same
   float32 numbers as DequantizeLinear): ONNX Runtime constant-folds those into float weights when the
   session starts (NCHWc float kernels, as fast as float initializers), while the file keeps one byte
   per weight. (A DequantizeLinear would stay in the graph: ONNX Runtime never folds it, to keep Q/DQ
   groups, so it would dequantize at every run and block the NCHWc layout.) Exception: a float layer
   whose output goes straight into a QuantizeLinear (through Clip, Relu or a Reshape-like op at most)
   keeps its DequantizeLinear weights and gets its bias as a separate ``Add``: ONNX Runtime's
   WeightBiasQuantization pass would otherwise re-quantize float weights there per tensor (its own
   scale, not ours) and round the bias to int32, a different model.

Integer kernels add the bias as int32 at scale s_x * s_w (step 3), so the bias moves by up to half a
step; float layers get the same int32-grid bias (``float_bias_on_grid``; not in the all-float exact
layout), so the model does not depend on the per-layer int8 / float choice. ``OrtLayoutReport.bias_shift``
records the move per torch module and parity simulates it (with the output Q/DQ) on the torch model:
at 6 bits a deep network is chaotic enough that even this sub-step shift flips downstream roundings
(demo MobileFaceNet: embedding cosine 0.977 against the unshifted model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graph import GraphIndex, attr, move_bias_to_add, name_nodes, remove_dead_nodes, remove_unused_initializers
from .ort_storage import act_dq, add_init, per_channel, quantize_bias, weight_dq, weight_only_dequant


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
    # torch module (the BN folded into the conv, else the conv) -> (C,) float64 shift of its bias by the
    # int32 bias rounding (what ONNX Runtime adds minus the float bias)
    bias_shift: dict[str, list[float]] = field(default_factory=dict)
    _bn_of: dict[str, str] = field(default_factory=dict)


def quantized_layers(proto: Any) -> list[Any]:
    """Conv / Gemm nodes whose input and weight both come from DequantizeLinear."""
    g = GraphIndex(proto.graph)
    return [n for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm") and act_dq(g, n) is not None and weight_dq(g, n) is not None]


def is_depthwise(proto: Any, node: Any) -> bool:
    g = GraphIndex(proto.graph)
    if node.op_type != "Conv":
        return False
    dq = weight_dq(g, node)
    w = g.const(dq.input[0]) if dq is not None else None
    return w is not None and attr(node, "group", 1) > 1 and w.shape[1] == 1


def fold_batchnorm(proto: Any, report: OrtLayoutReport) -> None:
    """Step 1 of the module docstring."""
    graph = proto.graph
    g = GraphIndex(graph)
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(g.downstream(conv.output[0])) != 1:
            continue
        dq = weight_dq(g, conv)
        vals = [g.const(i) for i in bn.input[1:5]]
        if dq is None or any(v is None for v in vals) or attr(dq, "axis", 1) not in (0, 1):
            continue
        gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
        k = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        codes, s, z = per_channel(g, dq, len(k))
        if np.any(k < 0) and (np.any(z != 0) or codes.dtype != np.int8 or np.any(codes[k < 0] == -128)):
            continue  # flipping asymmetric codes could leave the integer range
        sign = np.where(k < 0, -1, 1).astype(codes.dtype).reshape([-1] + [1] * (codes.ndim - 1))
        bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(k))
        base = conv.name or conv.output[0]
        dq.input[0] = add_init(graph, f"{base}_w_bn", codes * sign)
        dq.input[1] = add_init(graph, f"{base}_ws_bn", (s * np.abs(k)).astype(np.float32))
        dq.input[2] = add_init(graph, f"{base}_wz_bn", z)
        _set_attr(dq, "axis", 0)
        new_bias = add_init(graph, f"{base}_b_bn", ((bias - mean) * k + beta).astype(np.float32))
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
            done[n.input[2]] = add_init(graph, f"{n.input[2]}_u8", (z.astype(np.int16) + 128).astype(np.uint8))
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


def _feeds_quantizer(g: GraphIndex, name: str) -> bool:
    """Whether ``name`` goes straight into a QuantizeLinear, possibly through Clip / Relu and ops that only
    move data (ONNX Runtime moves a Q back across those): the pattern ONNX Runtime's
    WeightBiasQuantization pass turns into an integer layer."""
    for _ in range(8):
        users = g.downstream(name)
        if len(users) != 1 or name in g.graph_outputs:
            return False
        if users[0].op_type == "QuantizeLinear":
            return True
        if users[0].op_type not in ("Clip", "Relu", *_MOVE_OPS):
            return False
        name = users[0].output[0]
    return False


_MOVE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


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
               range_cache: dict[str, tuple[float, float]] | None = None,
               float_bias_on_grid: bool = True) -> OrtLayoutReport:
    """Rewrite ``proto`` in place (module docstring); returns what was done per layer.

    ``range_cache`` shares calibrated conv-output ranges between layouts of the same graph.
    ``float_bias_on_grid``: float layers add their bias on the int32 grid of the integer layers too (the
    model then does not depend on which layers run int8; 2 bytes per channel instead of 4); False
    keeps their float bias (the exact layout)."""
    report = OrtLayoutReport()
    name_nodes(proto.graph)
    fold_batchnorm(proto, report)
    signed_to_unsigned(proto)
    graph = proto.graph
    g = GraphIndex(graph)
    layers = quantized_layers(proto)
    todo, need_range = [], []
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    for conv in layers:
        if conv.name in keep_float:
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
    for conv in layers:  # after the range run: the new nodes join the graph only at the end
        if conv.name in keep_float:
            if _feeds_quantizer(g, conv.output[0]):  # see the module docstring, step 4
                add = move_bias_to_add(graph, g, conv)
                after[conv.name] = [add] if add is not None else []
            else:
                nodes: list[Any] = []
                if float_bias_on_grid:  # before the weights change: it reads the weight scale
                    nodes, shift = quantize_bias(graph, g, conv, as_float=True)
                    if shift is not None:
                        report.bias_shift[report._bn_of.get(conv.name, conv.name)] = shift.tolist()
                before[conv.name] = nodes + weight_only_dequant(graph, g, conv)
    from onnx import helper

    for conv, down in todo:
        out = conv.output[0]
        before[conv.name], shift = quantize_bias(graph, g, conv)
        if shift is not None:
            report.bias_shift[report._bn_of.get(conv.name, conv.name)] = shift.tolist()
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
            scale = add_init(graph, f"{conv.name}_out_scale", s)
            zp = add_init(graph, f"{conv.name}_out_zp", np.uint8(np.clip(np.rint(-lo / s), 0, 255)))
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
