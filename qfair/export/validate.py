"""Check an ONNX graph against a runtime's quantization rules, naming the offending node.

TensorRT explicit quantization (README references [8]): QuantizeLinear / DequantizeLinear at opset >= 13,
int8 with zero point 0, activations per tensor, weights per output channel, Q/DQ on both inputs of
every Conv / Gemm / MatMul and on the skip input of residual Adds, no Q/DQ between a Conv, its
BatchNormalization and its activation, a dynamic batch dimension. ONNX Runtime accepts int8 or uint8
(any zero point) and mixed float / int8 layers, so its rule set is a subset.

``validate_onnx(model_or_path, target)`` returns the violations; ``check_onnx`` raises ExportError.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..utils.errors import ExportError
from ..utils.registry import Registry
from .graph import ACTIVATION_OPS, MATMUL_OPS, QDQ_OPS, GraphIndex, attr, label, opset_version

INT8, UINT8, INT32 = 3, 2, 6  # onnx.TensorProto element types


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str  # node name ("" for graph-level rules)
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


Rule = Callable[[Any, GraphIndex], list[Violation]]
RULESETS: Registry[list[Rule]] = Registry("validation target")


def _zp_type_and_values(node: Any, g: GraphIndex) -> tuple[int | None, np.ndarray | None]:
    if len(node.input) < 3 or not node.input[2]:
        return None, None
    name = node.input[2]
    t = g.initializers.get(name)
    if t is not None:
        return t.data_type, g.const(name)
    value = g.const(name)
    if value is None:
        return -1, None  # computed zero point: not allowed either
    return {np.dtype(np.int8): INT8, np.dtype(np.uint8): UINT8, np.dtype(np.int32): INT32}.get(value.dtype, -1), value


def rule_opset(model: Any, g: GraphIndex) -> list[Violation]:
    v = opset_version(model)
    if v < 13:
        return [Violation("opset", "", f"opset {v} < 13: per-channel QuantizeLinear/DequantizeLinear needs 13+")]
    return []


def rule_dynamic_batch(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in g.initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            out.append(Violation("dynamic-batch", vi.name, f"graph input/output '{vi.name}' has a fixed batch "
                                 f"size {dims[0].dim_value}; export with a dynamic batch axis"))
    return out


def _qdq_nodes(g: GraphIndex):
    return [n for n in g.graph.node if n.op_type in QDQ_OPS]


def rule_int8_symmetric(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in _qdq_nodes(g):
        ztype, zval = _zp_type_and_values(n, g)
        if ztype is None and n.op_type == "DequantizeLinear":
            # a DQ without zero point reads its input's type: int8 codes (zero point 0) are fine; a DQ of a Q's
            # output has the Q's type, checked on the Q
            codes = g.initializers.get(n.input[0])
            if codes is None or codes.data_type == INT8:
                continue
            out.append(Violation("int8", n.name, f"{label(n)} dequantizes '{n.input[0]}' of type {codes.data_type}, "
                                 "not int8; TensorRT needs symmetric int8 weights"))
        elif ztype is None:
            if attr(n, "output_dtype", 0) != INT8:  # no zero point means uint8 unless output_dtype says int8
                out.append(Violation("int8", n.name, f"{label(n)} has no zero point, so it is uint8; TensorRT "
                                     "needs int8 with zero point 0"))
        elif ztype != INT8:
            out.append(Violation("int8", n.name, f"{label(n)} is not int8 (zero point type {ztype}); TensorRT "
                                 "needs symmetric int8 (export the 'deploy' recipe)"))
        elif zval is not None and np.any(zval != 0):
            out.append(Violation("zero-point", n.name, f"{label(n)} has a non-zero zero point; TensorRT needs "
                                 "symmetric quantization (zero point 0)"))
    return out


def _scale_size(n: Any, g: GraphIndex) -> int | None:
    s = g.const(n.input[1])
    return None if s is None else int(np.asarray(s).size)


def _weight_axis(consumer: Any, g: GraphIndex, weight_rank: int) -> int:
    """The output-channel axis of a weight feeding ``consumer``."""
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul":
        return weight_rank - 1
    return 0


def rule_granularity(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in _qdq_nodes(g):
        size = _scale_size(n, g)
        if size is None:
            out.append(Violation("scale", n.name, f"{label(n)}: the scale is computed, not a constant"))
            continue
        weight = g.is_weight_path(n.input[0])
        if not weight and size > 1:
            out.append(Violation("per-tensor-activation", n.name, f"{label(n)} quantizes an activation per "
                                 "channel; TensorRT needs per-tensor activation scales"))
        if weight and size > 1 and n.op_type == "DequantizeLinear":
            axis = attr(n, "axis", 1)
            value = g.const(n.input[0])
            rank = value.ndim if value is not None else 4
            for c in g.downstream(n.output[0]):
                if c.op_type in MATMUL_OPS and len(c.input) > 1 and c.input[1] == n.output[0]:
                    want = _weight_axis(c, g, rank)
                    if axis % rank != want:
                        out.append(Violation("weight-axis", n.name, f"{label(n)} quantizes the weight of "
                                             f"{label(c)} along axis {axis}; use the output-channel axis {want}"))
    return out


def _from_dq(name: str, g: GraphIndex) -> bool:
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
        node = g.producer.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def rule_matmul_inputs(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in g.graph.node:
        if n.op_type in MATMUL_OPS:
            for i, what in ((0, "input"), (1, "weight")):
                if len(n.input) > i and not _from_dq(n.input[i], g):
                    out.append(Violation("qdq-inputs", n.name, f"{label(n)}: its {what} '{n.input[i]}' has no "
                                         "DequantizeLinear, so TensorRT runs this layer in float; quantize both "
                                         "its input and weight, or keep the whole layer float (quantize with "
                                         "--skip LAYER: the export then lists it as a float layer)"))
    return out


def _producer_past_bias(name: str, g: GraphIndex) -> Any:
    """The producer of ``name``, looking through an Add of a constant (a conv bias moved out of the conv
    by graph.bias_as_add)."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Add" and len(node.input) == 2 and g.is_const(node.input[1]):
        return g.producer.get(node.input[0])
    return node


def _producer_past_range_clip(name: str, g: GraphIndex) -> Any:
    """The producer of a QuantizeLinear's input, looking through the Clip / Min / Max with constant bounds
    that holds a sub-8-bit range inside int8 (graph translation puts one before every such Q), then
    through a constant bias Add."""
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Clip", "Min", "Max") and len(node.input) >= 2 and \
            all(g.is_const(i) for i in node.input[1:] if i):
        node = g.producer.get(node.input[0])
    return _producer_past_bias(node.output[0], g) if node is not None else None


def _is_conv_output(name: str, g: GraphIndex) -> bool:
    node = _producer_past_bias(name, g)
    if node is not None and node.op_type == "BatchNormalization":
        node = g.producer.get(node.input[0])
    return node is not None and node.op_type in MATMUL_OPS


def rule_residual_add(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in g.graph.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        acts = [i for i in n.input if not g.is_const(i)]
        if len(acts) != 2:
            continue  # a bias add, not a residual
        skips = [i for i in acts if not _is_conv_output(i, g)]
        if len(skips) == 2:
            continue  # not a conv block output
        if not skips:  # conv + downsample conv: one of them must carry the Q/DQ
            skips = acts
            if any(_from_dq(i, g) for i in acts):
                continue
        for s in skips:
            if not _from_dq(s, g):
                out.append(Violation("residual-skip", n.name, f"{label(n)}: the skip input '{s}' has no "
                                     "QuantizeLinear/DequantizeLinear, so TensorRT runs the Add in float"))
    return out


def rule_no_qdq_inside_conv_bn_act(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in g.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        src = _producer_past_range_clip(n.input[0], g)  # a 6-bit Q sits behind its Clip: the same pattern
        if src is None or src.op_type not in (*MATMUL_OPS, "BatchNormalization"):
            continue
        for dq in g.downstream(n.output[0]):
            for c in g.downstream(dq.output[0]) if dq.op_type == "DequantizeLinear" else []:
                if c.op_type == "BatchNormalization" or (c.op_type in ACTIVATION_OPS and c.op_type != "Clip"):
                    out.append(Violation("conv-bn-act", n.name, f"{label(n)} sits between {label(src)} and "
                                         f"{label(c)}; TensorRT fuses Conv-BN-activation, remove this Q/DQ"))
    return out


def rule_any_int8(model: Any, g: GraphIndex) -> list[Violation]:
    out = []
    for n in _qdq_nodes(g):
        ztype, _ = _zp_type_and_values(n, g)
        bias = n.op_type == "DequantizeLinear" and n.input[0] in g.initializers and \
            g.initializers[n.input[0]].data_type == INT32 and ztype in (None, INT32)
        if ztype not in (None, INT8, UINT8) and not bias:
            out.append(Violation("int8", n.name, f"{label(n)}: zero point must be an int8 or uint8 constant "
                                 "(int32 only for a constant bias)"))
    return out


RULESETS.add("tensorrt", [rule_opset, rule_dynamic_batch, rule_int8_symmetric, rule_granularity,
                          rule_matmul_inputs, rule_residual_add, rule_no_qdq_inside_conv_bn_act])
RULESETS.add("onnxruntime", [rule_opset, rule_dynamic_batch, rule_any_int8])


def validate_onnx(model: Any, target: str = "tensorrt", float_layers: Iterable[str] = ()) -> list[Violation]:
    """Violations of ``target``'s rules by ``model`` (an onnx.ModelProto or a path).

    ``float_layers``: names of Conv / Gemm / MatMul nodes meant to run in float (layers the quantized model
    keeps float): the runtime runs them in float, as the model does, so a missing Q/DQ on both their inputs
    is no violation. A layer with Q/DQ on one input only is still one (half a quantized layer)."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    g = GraphIndex(model.graph)
    bad = [v for rule in RULESETS.get(target) for v in rule(model, g)]
    allowed = set(float_layers)
    fully_float = {n.name for n in model.graph.node if n.name in allowed and n.op_type in MATMUL_OPS
                   and not any(_from_dq(i, g) for i in n.input[:2])}
    return [v for v in bad if not (v.rule == "qdq-inputs" and v.node in fully_float)]


def check_onnx(model: Any, target: str = "tensorrt", limit: int = 10, float_layers: Iterable[str] = ()) -> None:
    """Raise ExportError listing (up to ``limit``) violations of ``target``'s rules (``float_layers``: as
    :func:`validate_onnx`)."""
    bad = validate_onnx(model, target, float_layers)
    if bad:
        lines = "\n  ".join(str(v) for v in bad[:limit])
        more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
        raise ExportError(f"the ONNX graph breaks {len(bad)} {target} quantization rule(s):\n  {lines}{more}")
