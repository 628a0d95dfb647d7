"""Export targets (a registry): what each runtime needs from the graph.

- ``tensorrt``: the graph exactly as the fake-quant model computes it (TensorRT's explicit
  quantization layout; README references [8]); only symmetric models qualify.
- ``onnxruntime``: rewritten by :mod:`qfair.export.ort_layout` so ONNX Runtime fuses integer kernels
  on x86; depthwise convs are kept in float when that measures faster.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..utils.errors import ExportError
from ..utils.registry import Registry


@dataclass
class ExportContext:
    """What a target needs besides the graph."""

    model: nn.Module  # frozen fake-quant (or float) model
    quantized: bool
    bits: int | None
    calib_images: torch.Tensor  # (N, 3, 112, 112) float, normalised
    keep_float: str = "auto"  # "auto" (measure), "none", "depthwise"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    name: str
    rules: str  # validation rule set (qfair.export.validate.RULESETS)
    check: Callable[[ExportContext], None]
    build: Callable[[Any, ExportContext], dict[str, Any]]  # rewrites the graph in place, returns a report
    compact: bool = False  # short tensor names in the written file (graph.compact_graph)
    exact_fallback: str | None = None  # keep_float layout used when "auto" fails parity (api.export_onnx)


TARGETS: Registry[Target] = Registry("export target")


def _quantizers(model: nn.Module):
    from ..quant import iter_quantizers

    return [(n, q) for n, q in iter_quantizers(model) if q.fake_quant_enabled]


def _check_tensorrt(ctx: ExportContext) -> None:
    bad = []
    for name, q in _quantizers(ctx.model):
        if not q.symmetric or bool(torch.any(q.zero_point != 0)):
            bad.append(f"{name} (asymmetric)")
        elif q.role != "weight" and q.axis is not None:
            bad.append(f"{name} (per-channel activation)")
        elif q.role == "weight" and q.axis not in (None, 0):
            bad.append(f"{name} (weight axis {q.axis})")
    if bad:
        recipe = (getattr(ctx.model, "qfair_quant", None) or {}).get("recipe", "?")
        raise ExportError(
            f"this model (recipe '{recipe}') cannot run exactly on TensorRT, which needs symmetric int8 with zero "
            f"point 0, per-tensor activations and per-output-channel weights; offending quantizers: "
            f"{', '.join(bad[:5])}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}. Re-quantize with "
            "--recipe deploy, or export for ONNX Runtime (--target onnxruntime), which takes uint8 zero points")


def float_modules(model: nn.Module) -> set[str]:
    """Names of the conv / linear modules that the model runs in float (no active weight quantizer: kept
    float by ``QuantConfig.skip``, e.g. the input layer or the embedding head)."""
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            q = getattr(m, "weight_quantizer", None)
            if q is None or not q.fake_quant_enabled:
                out.add(name)
    return out


def _build_tensorrt(proto: Any, ctx: ExportContext) -> dict[str, Any]:
    from .graph import MATMUL_OPS, bias_as_add
    from .ort_layout import quantized_layers

    if not ctx.quantized:
        return {"layout": "float", "int8_layers": [], "float_layers": []}
    layers = [n.name for n in quantized_layers(proto)]
    # layers the model keeps float stay float in the engine (TensorRT runs them in float, as the model): the
    # validator accepts a Conv / Gemm without Q/DQ only for these
    floats = float_modules(ctx.model)
    kept = [n.name for n in proto.graph.node if n.op_type in MATMUL_OPS and n.name in floats]
    moved = bias_as_add(proto.graph)  # float bias stays float in ONNX Runtime too (see bias_as_add)
    return {"layout": "tensorrt explicit quantization (Q/DQ on conv inputs and residual skips)",
            "int8_layers": layers, "float_layers": kept, "float_bias_adds": moved}


def _latency(proto: Any, images: torch.Tensor, runs: int = 5) -> float:
    """Median seconds of one batch through ONNX Runtime (1 thread, after a warm-up run)."""
    from .parity import ort_session

    sess = ort_session(proto, threads=1)
    x = {"input": images.numpy().astype(np.float32)}
    sess.run(None, x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer_times(proto: Any, images: torch.Tensor, layers: list[str], runs: int = 3) -> dict[str, float]:
    """Seconds per run spent in each layer (its fused kernels and its output Q/DQ), from ONNX
    Runtime's profiler (1 thread); node names start with the layer name."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = {"input": images.numpy().astype(np.float32)}
        for _ in range(runs + 1):
            sess.run(None, x)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, float] = {}
    for e in events[len(events) // (runs + 1):]:  # roughly skip the warm-up run
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node[name] = per_node.get(name, 0.0) + e["dur"] * 1e-6 / runs
    # ONNX Runtime names fused int8 kernels "<layer>_token_N" and NCHWc float convs "<output>_nchwc"
    nchwc = {f"{n.output[0]}_nchwc": n.name for n in proto.graph.node if n.name in layers}
    by_len = sorted(layers, key=len, reverse=True)  # longest prefix wins
    out = {layer: 0.0 for layer in layers}
    for node, sec in per_node.items():
        if node in nchwc:
            out[nchwc[node]] += sec
            continue
        for layer in by_len:
            if node == layer or node.startswith(layer + "_"):
                out[layer] += sec
                break
    return out


def _build_onnxruntime(proto: Any, ctx: ExportContext) -> dict[str, Any]:
    """ONNX Runtime layout; with keep_float="auto" each quantized layer runs int8 or float, whichever
    ONNX Runtime's profiler measured faster for it (all-int8 vs all-float graphs), and the result is
    kept only if the whole graph also measures faster than all-int8."""
    from .graph import rewrite_prelu
    from .ort_layout import is_depthwise, ort_layout, quantized_layers

    if not ctx.quantized:
        return {"layout": "float", "int8_layers": [], "float_layers": [], "prelu_rewritten": rewrite_prelu(proto.graph)}
    layers = [n.name for n in quantized_layers(proto)]
    fixed = {"none": set(), "depthwise": {n.name for n in quantized_layers(proto) if is_depthwise(proto, n)},
             "all": set(layers)}
    if ctx.keep_float not in ("auto", *fixed):
        raise ExportError(f"unknown keep_float option '{ctx.keep_float}'; use auto, none, depthwise or all")

    ranges: dict[str, tuple[float, float]] = {}

    def build(keep: set[str]):
        candidate = copy.deepcopy(proto)
        # all layers float: the exact layout, float biases as in the model
        rep = ort_layout(candidate, ctx.calib_images, keep_float=keep, range_cache=ranges,
                         float_bias_on_grid=keep != set(layers))
        rewrite_prelu(candidate.graph)
        return candidate, rep

    bench = ctx.calib_images[:8]
    measured: dict[str, Any] = {}
    if ctx.keep_float == "auto":
        int8, int8_rep = build(set())
        flt, _ = build(set(layers))
        t_int8, t_float = layer_times(int8, bench, layers), layer_times(flt, bench, layers)
        keep = {n for n in layers if t_float[n] < t_int8[n]}
        measured["per_layer_ms"] = {n: {"int8": t_int8[n] * 1e3, "float": t_float[n] * 1e3} for n in layers}
        chosen, rep = (int8, int8_rep)
        if keep:
            mixed, mixed_rep = build(keep)
            lat = {"all_int8": _latency(int8, bench), "mixed": _latency(mixed, bench)}
            measured["latency_s_batch8"] = lat
            if lat["mixed"] < lat["all_int8"]:
                chosen, rep = mixed, mixed_rep
        pick = "auto"
    else:
        chosen, rep = build(fixed[ctx.keep_float])
        pick = ctx.keep_float
    proto.CopyFrom(chosen)
    return {"layout": "onnxruntime QDQ (QLinearConv / QGemm fusion, uint8 activations, int8 weights)",
            "keep_float": pick, **measured, "int8_layers": rep.int8_layers, "float_layers": rep.float_layers,
            "folded_bn": rep.folded_bn, "outputs": {"exact": rep.exact_outputs, "shared": rep.shared_outputs,
                                                    "calibrated": rep.calibrated_outputs},
            "output_quant": rep.output_quant, "bias_shift": rep.bias_shift}


TARGETS.add("tensorrt", Target("tensorrt", "tensorrt", _check_tensorrt, _build_tensorrt), aliases=("trt",))
TARGETS.add("onnxruntime", Target("onnxruntime", "onnxruntime", lambda ctx: None, _build_onnxruntime, compact=True,
                                   exact_fallback="all"), aliases=("ort",))
