"""Deployment: ONNX graphs per runtime (TensorRT explicit quantization, ONNX Runtime QDQ), a graph
validator, parity checks against the fake-quant model, TensorRT engines, packed low-bit checkpoints
and latency benchmarks. Heavy imports (onnx, onnxruntime, tensorrt) happen inside the functions.

Public API: ``export_onnx``, ``export_packed``, ``validate_onnx``, ``check_onnx``, ``TARGETS``, ``save_packed``,
``load_packed``, ``build_engine``, ``bench_run``.
"""
from __future__ import annotations

from qfair.utils.lazy import lazy_exports

_LAZY = {
    "export_onnx": "qfair.export.api:export_onnx",
    "load_for_export": "qfair.export.api:load_for_export",
    "validate_onnx": "qfair.export.validate:validate_onnx",
    "check_onnx": "qfair.export.validate:check_onnx",
    "TARGETS": "qfair.export.targets:TARGETS",
    "export_packed": "qfair.export.packed:export_packed",
    "save_packed": "qfair.export.packed:save_packed",
    "load_packed": "qfair.export.packed:load_packed",
    "load_packed_into": "qfair.export.packed:load_packed_into",
    "build_engine": "qfair.export.tensorrt:build_engine",
    "bench_run": "qfair.export.bench:bench_run",
    "parity_check": "qfair.export.parity:parity_check",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
