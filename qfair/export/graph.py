"""Small helpers over an ONNX graph: who produces / consumes a tensor, constant values, node labels,
and the clean-ups every exported graph gets (unique node names, unused initializers removed)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MATMUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATION_OPS = ("Relu", "PRelu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu",
                  "Selu", "Softplus", "Gelu", "Mish")


class GraphIndex:
    """Index of one ``onnx.GraphProto`` (rebuild it after editing the graph)."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self._np = numpy_helper
        self.graph_outputs = {o.name for o in graph.output}

    def is_const(self, name: str) -> bool:
        node = self.producer.get(name)
        return name in self.initializers or (node is not None and node.op_type == "Constant")

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant node output, else None."""
        if name in self.initializers:
            return self._np.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
                if a.name == "value_float":
                    return np.asarray(a.f, np.float32)
                if a.name == "value_int":
                    return np.asarray(a.i, np.int64)
        return None

    def is_weight_path(self, name: str) -> bool:
        """True when ``name`` is a constant, possibly through Q, DQ, Transpose, Reshape, Cast."""
        seen = 0
        while seen < 8:
            if self.is_const(name):
                return True
            node = self.producer.get(name)
            if node is None or node.op_type not in (*QDQ_OPS, "Transpose", "Reshape", "Cast", "Identity"):
                return False
            name = node.input[0]
            seen += 1
        return False

    def upstream_op(self, name: str) -> Any:
        node = self.producer.get(name)
        return node

    def downstream(self, name: str) -> list[Any]:
        return self.consumers.get(name, [])


def attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def label(node: Any) -> str:
    """How errors name a node: its name, op type and first output."""
    out = node.output[0] if node.output else "?"
    return f"{node.op_type} node '{node.name or out}' (output '{out}')"


def name_nodes(graph: Any) -> None:
    """Give every unnamed node a unique name (the validator and reports refer to nodes by name)."""
    used = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            base = f"{node.op_type}_{i}"
            name = base
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def remove_dead_nodes(graph: Any) -> None:
    """Drop nodes none of whose outputs is used (repeatedly, so whole dead chains go)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(keep)


def remove_unused_initializers(graph: Any) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def opset_version(model: Any, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(o.version)
    return 0


def _const_or_dequantized(g: GraphIndex, name: str) -> np.ndarray | None:
    """A constant, or DequantizeLinear of constants computed as ONNX does ((q - zp) * s in float32)."""
    value = g.const(name)
    if value is not None:
        return value
    node = g.producer.get(name)
    if node is not None and node.op_type in ("Reshape", "Unsqueeze") and len(node.input) > 1:
        inner, shape = _const_or_dequantized(g, node.input[0]), g.const(node.input[1])
        if inner is None or shape is None:
            return None
        if node.op_type == "Reshape":
            return inner.reshape([d if d != 0 else inner.shape[i] for i, d in enumerate(shape.tolist())])
        return np.expand_dims(inner, tuple(int(a) for a in shape.reshape(-1)))
    if node is None or node.op_type != "DequantizeLinear":
        return None
    q, s = g.const(node.input[0]), g.const(node.input[1])
    z = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int32)
    if q is None or s is None or z is None or s.size != 1:
        return None
    return (q.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32)


def rewrite_prelu(graph: Any) -> int:
    """Replace PRelu (constant slope) by ``Max(x, x * a)`` (all slopes in [0, 1]) or
    ``Relu(x) + Min(x, 0) * a``: the same numbers bit for bit (one product, then a selection), but
    ONNX Runtime's CPU PRelu broadcasts the per-channel slope element by element and measured about
    100x slower than Mul + Max on (16, 128, 28, 28) -- half of MobileFaceNet's float32 run time."""
    from onnx import helper, numpy_helper

    g = GraphIndex(graph)
    out, count = [], 0
    zero = None
    for node in graph.node:
        slope = _const_or_dequantized(g, node.input[1]) if node.op_type == "PRelu" else None
        if slope is None:
            out.append(node)
            continue
        x, y, base = node.input[0], node.output[0], node.name or node.output[0]
        if not g.is_const(node.input[1]):  # a quantized slope: its dequantized values, same float32 math
            graph.initializer.append(numpy_helper.from_array(slope.astype(np.float32), f"{base}_slope"))
            node.input[1] = f"{base}_slope"
        if np.all((slope >= 0) & (slope <= 1)):
            out += [helper.make_node("Mul", [x, node.input[1]], [f"{base}_ax"], name=f"{base}_mul"),
                    helper.make_node("Max", [x, f"{base}_ax"], [y], name=f"{base}_max")]
        else:
            if zero is None:
                zero = "prelu_zero"
                graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
            out += [helper.make_node("Relu", [x], [f"{base}_pos"], name=f"{base}_relu"),
                    helper.make_node("Min", [x, zero], [f"{base}_neg"], name=f"{base}_min"),
                    helper.make_node("Mul", [f"{base}_neg", node.input[1]], [f"{base}_aneg"], name=f"{base}_mul"),
                    helper.make_node("Add", [f"{base}_pos", f"{base}_aneg"], [y], name=f"{base}_add")]
        count += 1
    del graph.node[:]
    graph.node.extend(out)
    return count


def bias_as_add(graph: Any) -> int:
    """Move the float bias of every Conv / Gemm whose input and weight come from DequantizeLinear into an
    ``Add`` right after it; returns how many moved.

    Why: ONNX Runtime's WeightBiasQuantization pass (level "basic", so always on) rounds such a bias to
    int32 at scale s_x * s_w when the layer's output feeds a QuantizeLinear (directly or through Clip),
    while the fake-quant model and TensorRT add it in float. At 6 bits s_x is coarse (0.41 on the demo
    MobileFaceNet: bias grid 0.004), the shift flips 6-bit roundings downstream and the embeddings drift
    (cosine 0.980 instead of 0.9998). TensorRT fuses the Add back into the convolution's float bias."""
    g = GraphIndex(graph)
    out, count = [], 0
    for node in graph.node:
        out.append(node)
        dq = [g.producer.get(i) for i in node.input[:2]]
        if node.op_type not in ("Conv", "Gemm") or any(d is None or d.op_type != "DequantizeLinear" for d in dq):
            continue
        add = move_bias_to_add(graph, g, node)
        if add is not None:
            out.append(add)
            count += 1
    del graph.node[:]
    graph.node.extend(out)
    remove_unused_initializers(graph)
    return count


def move_bias_to_add(graph: Any, g: GraphIndex, node: Any) -> Any | None:
    """Take the constant (C,) bias off Conv / Gemm ``node``; returns the ``Add`` that adds it back (to be
    placed right after ``node``; it writes ``node``'s old output), or None when there is no such bias."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return None
    bias = g.const(node.input[2])
    rank = 2 if node.op_type == "Gemm" else _conv_rank(g, node)
    if bias is None or bias.ndim != 1 or rank is None:
        return None
    base = node.name or node.output[0]
    name = f"{base}_bias_add"
    # (C,) -> (C, 1, ..., 1): broadcasts along the channel axis of an (N, C, ...) output
    graph.initializer.append(numpy_helper.from_array(bias.reshape([-1] + [1] * (rank - 2)), name))
    y = node.output[0]
    node.output[0] = f"{y}_nobias"
    del node.input[2]
    return helper.make_node("Add", [node.output[0], name], [y], name=f"{base}_bias")


def _conv_rank(g: GraphIndex, conv: Any) -> int | None:
    """Rank of a Conv's output (2 + spatial dims), from its weight's rank."""
    node = g.producer.get(conv.input[1])
    w = g.const(node.input[0]) if node is not None else g.const(conv.input[1])
    return None if w is None else w.ndim


def compact_graph(graph: Any, keep_node_names: tuple[str, ...] = MATMUL_OPS) -> int:
    """Shrink the file without changing what it computes; returns the bytes saved.

    Identical initializers are stored once; every tensor except the graph inputs and outputs gets a
    short name (``t12``, initializers ``i3``); only nodes of ``keep_node_names`` keep their names (the
    layer names); Conv attributes equal to ONNX's defaults and all-zero zero points of constant int8
    Conv weights (zero is the default) are dropped. On MobileFaceNet the names
    (``layers.5.layers.3.layers.1.layers.0_bias_dq`` ...) alone took 45 KB, 2% of the int8 file."""
    from onnx import TensorProto, numpy_helper

    before = graph.ByteSize()
    g = GraphIndex(graph)
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] in g.initializers \
                and all(c.op_type == "Conv" for c in g.downstream(node.output[0])):  # (QGemm fusion wants it)
            z = g.initializers[node.input[2]]
            if z.data_type == TensorProto.INT8 and g.is_const(node.input[0]) and not numpy_helper.to_array(z).any():
                del node.input[2]
        _drop_default_attributes(node, g)
    remove_unused_initializers(graph)
    by_value: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    keep = []
    for t in graph.initializer:
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in by_value:
            alias[t.name] = by_value[key]
        else:
            by_value[key] = t.name
            keep.append(t)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    fixed = {v.name for v in [*graph.input, *graph.output]}
    new: dict[str, str] = {}

    def short(name: str, prefix: str) -> str:
        name = alias.get(name, name)
        if not name or name in fixed:
            return name
        if name not in new:
            new[name] = f"{prefix}{len(new)}"
        return new[name]

    for t in graph.initializer:
        t.name = short(t.name, "i")
    for node in graph.node:
        for i, x in enumerate(node.input):
            node.input[i] = short(x, "t")
        for i, x in enumerate(node.output):
            node.output[i] = short(x, "t")
        if node.op_type not in keep_node_names:
            node.name = ""
    del graph.value_info[:]
    return before - graph.ByteSize()


def _drop_default_attributes(node: Any, g: GraphIndex) -> None:
    """Remove attributes that only restate ONNX's defaults (Conv, Gemm, per-tensor Q/DQ ``axis``)."""
    from onnx import helper

    defaults: dict[str, Any] = {}
    if node.op_type == "Conv":
        defaults = {"auto_pad": b"NOTSET", "group": 1, "dilations": 1, "strides": 1, "pads": 0}
    elif node.op_type == "Gemm":
        defaults = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    elif node.op_type in QDQ_OPS:
        scale = g.const(node.input[1])
        if scale is not None and scale.ndim == 0:  # per tensor: the axis means nothing
            defaults = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"}
    for a in list(node.attribute):
        if a.name not in defaults:
            continue
        value, default = helper.get_attribute_value(a), defaults[a.name]
        if value == default or (isinstance(value, list) and all(v == default for v in value)):
            node.attribute.remove(a)
