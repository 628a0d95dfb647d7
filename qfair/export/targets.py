"""Export targets (a registry): what each runtime needs from the graph.

- ``tensorrt``: the graph exactly as the fake-quant model computes it (TensorRT's explicit
  quantization layout; FACTS.md section 8); only symmetric models qualify.
- ``onnxruntime``: rewritten by :mod:`qfair.export.ort_layout` so ONNX Runtime fuses integer kernels
  on x86; depthwise convs are kept in float when that measures faster.
"""
from __future__ import annotations

import copy
import time
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
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Re-quantize with --recipe deploy, or export "
            "for ONNX Runtime (--target onnxruntime), which takes uint8 zero points")


def _build_tensorrt(proto: Any, ctx: ExportContext) -> dict[str, Any]:
    from .ort_layout import quantized_layers

    return {"layout": "tensorrt explicit quantization (Q/DQ on conv inputs and residual skips)",
            "int8_layers": [n.name for n in quantized_layers(proto)], "float_layers": []}


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


def _build_onnxruntime(proto: Any, ctx: ExportContext) -> dict[str, Any]:
    from .ort_layout import is_depthwise, ort_layout, quantized_layers

    if not ctx.quantized:
        return {"layout": "float", "int8_layers": [], "float_layers": []}
    depthwise = {n.name for n in quantized_layers(proto) if is_depthwise(proto, n)}
    choices = {"none": set(), "depthwise": depthwise}
    if ctx.keep_float not in ("auto", *choices):
        raise ExportError(f"unknown keep_float option '{ctx.keep_float}'; use auto, none or depthwise")
    tried: dict[str, float] = {}
    options = list(choices) if ctx.keep_float == "auto" and depthwise else \
        [ctx.keep_float if ctx.keep_float != "auto" else "none"]
    built = {}
    for option in options:
        candidate = copy.deepcopy(proto)
        built[option] = (candidate, ort_layout(candidate, ctx.calib_images, keep_float=choices[option]))
        if len(options) > 1:  # chosen by measured latency (batch 8, one thread, median of 5)
            tried[option] = _latency(candidate, ctx.calib_images[:8])
    pick = min(tried, key=tried.get) if tried else options[0]
    candidate, report = built[pick]
    proto.CopyFrom(candidate)
    return {"layout": "onnxruntime QDQ (QLinearConv / QGemm fusion, uint8 activations, int8 weights)",
            "keep_float": pick, "latency_s_batch8": tried, "int8_layers": report.int8_layers,
            "float_layers": report.float_layers, "folded_bn": report.folded_bn,
            "outputs": {"exact": report.exact_outputs, "shared": report.shared_outputs,
                        "calibrated": report.calibrated_outputs}, "output_quant": report.output_quant}


TARGETS.add("tensorrt", Target("tensorrt", "tensorrt", _check_tensorrt, _build_tensorrt), aliases=("trt",))
TARGETS.add("onnxruntime", Target("onnxruntime", "onnxruntime", lambda ctx: None, _build_onnxruntime),
            aliases=("ort",))
