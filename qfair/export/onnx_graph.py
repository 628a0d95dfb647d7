"""Torch model -> ONNX graph with Q/DQ (dynamo exporter + the fake-quant translation), then the
clean-ups every target needs: weights stored as int8/uint8 codes (Q on a constant folded away, so the
file holds one byte per weight), unique node names, IR version 10 (onnxruntime 1.31 reads <= 13 while
onnx 1.23 writes 14; README references [8]), the input named ``input`` (batch, 3, 112, 112) with a
dynamic batch, the output ``embedding``.
"""
from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.errors import ExportError
from .graph import GraphIndex, name_nodes, remove_dead_nodes, remove_unused_initializers

IR_VERSION = 10
DEFAULT_OPSET = 18


def float_dtypes(model: nn.Module) -> list[torch.dtype]:
    """The floating dtypes of ``model``'s parameters and buffers other than float32 (sorted by name)."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return sorted(dtypes - {torch.float32}, key=str)


def freeze_copy(model: nn.Module) -> nn.Module:
    """Eval-mode float32 deep copy whose quantizers are frozen (dynamic weight ranges fixed by one forward).

    A float16 / bfloat16 model becomes float32: its weights and quantizer scales are exact in float32, the
    fake-quant op already quantizes half inputs in float32, and the graph reads float32 images (ONNX Runtime
    has no fast float16 CPU kernels)."""
    m = copy.deepcopy(model).eval().float()
    quantizers = []
    try:
        from ..quant import iter_quantizers

        quantizers = [q for _, q in iter_quantizers(m)]
    except ImportError:  # pragma: no cover - quant is part of the package
        pass
    for q in quantizers:
        q.observer_enabled = False
        fixed_scale(q)
    if any(getattr(q, "dynamic", False) for q in quantizers):
        with torch.no_grad():
            m(torch.zeros(1, 3, 112, 112, device=next(m.parameters()).device))  # sets the weight ranges
    for q in quantizers:
        q.dynamic = False
    m.qfair_quant = getattr(model, "qfair_quant", None)
    return m


def fixed_scale(q: nn.Module) -> None:
    """A learnable (LSQ) scale becomes a plain buffer again, as before ``enable_lsq``.

    In the forward pass LSQ's gradient scaling is the identity (``grad_scale``: exactly the scale), but its
    factor depends on ``x.numel()``: exported, that pinned the batch size (a QAT run's graph computed batch 2
    whatever its input said) and made the Q/DQ scales computed values instead of constants."""
    if not getattr(q, "lsq", False):
        return
    scale = q.scale.detach().clone()
    del q._parameters["scale"]
    q.register_buffer("scale", scale)
    q.lsq = False


def torch_to_onnx(model: nn.Module, opset: int = DEFAULT_OPSET) -> Any:
    """Export an (already frozen) model; returns the cleaned onnx.ModelProto.

    Opsets below 18 are exported at 18 and converted down afterwards: torch's exporter converts them with
    onnx's C version converter, which drops the per-node metadata that names nodes after their modules
    (the ONNX Runtime layout and the reports find layers by those names)."""
    from .translation import translation_table

    native = max(int(opset), DEFAULT_OPSET)

    model = model.cpu().eval()
    example = torch.zeros(2, 3, 112, 112)
    batch = torch.export.Dim("batch", min=1, max=4096)
    log = logging.getLogger("torch.onnx")
    level = log.level  # quiet for this export only: the caller's logging settings are theirs
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            log.setLevel(logging.ERROR)
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                        output_names=["embedding"], opset_version=native,
                                        dynamic_shapes=({0: batch},), custom_translation_table=translation_table(),
                                        verbose=False, optimize=True)
    except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        log.setLevel(level)
    proto = program.model_proto
    _check_dynamic_batch(proto, type(model).__name__)
    fold_weight_quantization(proto)
    name_by_module(proto.graph)
    name_nodes(proto.graph)
    remove_unused_initializers(proto.graph)
    if opset < native:
        proto = _convert_opset(proto, opset)
    proto.ir_version = IR_VERSION
    strip_metadata(proto)
    for vi in [*proto.graph.input, *proto.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def _check_dynamic_batch(proto: Any, what: str) -> None:
    """ExportError when the exporter fixed the batch size (the model's computation depends on it, e.g. a
    ``view(2, -1)`` or a Python number computed from ``x.shape[0]``): such a graph fails at any other batch."""
    for vi in [*proto.graph.input, *proto.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise ExportError(f"torch.onnx.export fixed the batch size of {what}'s {vi.name!r} to {dims[0].dim_value}: "
                              "the model's forward computes something from the batch size as a Python number "
                              "(x.view(2, -1), int(x.shape[0]), x.numel() in arithmetic), so the graph would run only "
                              "that batch. Use x.flatten(1) / x.view(x.shape[0], -1) and tensor ops in forward")


def _convert_opset(proto: Any, opset: int) -> Any:
    """``proto`` converted to ``opset`` by onnx's version converter (node names are kept)."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, opset)
    except Exception as exc:  # the converter raises RuntimeError / ConvertError with C++ messages
        raise ExportError(f"cannot convert the graph from opset {DEFAULT_OPSET} to opset {opset}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; export with "
                          f"--opset {DEFAULT_OPSET} or newer") from exc


def strip_metadata(proto: Any) -> None:
    """Drop the exporter's bookkeeping (the exported program's signature on the graph, per-tensor origin
    notes): about 47 KB on MobileFaceNet, 2% of its int8 file, and no runtime reads it."""
    del proto.metadata_props[:]
    del proto.graph.metadata_props[:]
    for item in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer]:
        del item.metadata_props[:]


def name_by_module(graph: Any) -> None:
    """Name Conv / Gemm / MatMul nodes after the torch module that made them (``layer1.0.conv1``), from
    the exporter's name-scope metadata, so reports and errors speak the model's language; then drop
    the per-node metadata (stack traces) from the file."""
    import ast

    used: set[str] = set()
    for node in graph.node:
        meta = {m.key: m.value for m in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if node.op_type in ("Conv", "Gemm", "MatMul", "BatchNormalization") and scopes:
            try:
                parts = ast.literal_eval(scopes)
            except (ValueError, SyntaxError):
                parts = []
            module = parts[-2] if len(parts) > 1 else ""
            if module and module not in used:
                node.name = module
                used.add(module)
        del node.metadata_props[:]


def _const_input(g: GraphIndex, name: str) -> tuple[np.ndarray | None, list[Any]]:
    """Value of ``name`` if it is a constant, possibly through a Clip with constant bounds."""
    value = g.const(name)
    if value is not None:
        return value, []
    node = g.producer.get(name)
    if node is not None and node.op_type == "Clip":
        x = g.const(node.input[0])
        lo = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if x is not None and (lo is not None or len(node.input) < 2) and (hi is not None or len(node.input) < 3):
            return np.clip(x, lo if lo is not None else -np.inf, hi if hi is not None else np.inf), [node]
    if node is not None and node.op_type in ("Min", "Max"):
        inner, dead = _const_input(g, node.input[0])
        b = g.const(node.input[1])
        if inner is not None and b is not None:
            return (np.minimum if node.op_type == "Min" else np.maximum)(inner, b), [*dead, node]
    return None, []


def quantize_np(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear in numpy (x / s, round half to even, saturate to zp's dtype)."""
    info = np.iinfo(zp.dtype)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def fold_weight_quantization(proto: Any) -> int:
    """Replace ``QuantizeLinear(constant)`` by the constant codes (int8/uint8 initializer). Returns count."""
    from onnx import numpy_helper

    from .graph import attr

    g = GraphIndex(proto.graph)
    count = 0
    for node in list(proto.graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        x, dead = _const_input(g, node.input[0])
        scale = g.const(node.input[1])
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.array(0, np.uint8)
        if x is None or scale is None or zp is None:
            continue
        codes = quantize_np(x, scale, zp, attr(node, "axis", 1))
        name = f"{node.output[0]}_codes"
        proto.graph.initializer.append(numpy_helper.from_array(codes, name))
        for consumer in g.downstream(node.output[0]):
            for i, inp in enumerate(consumer.input):
                if inp == node.output[0]:
                    consumer.input[i] = name
        count += 1
    remove_dead_nodes(proto.graph)
    return count
