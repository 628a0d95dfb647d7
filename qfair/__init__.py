"""qfair: compress face recognition models to 8 and 6 bits and measure, group by group,
what the compression did to fairness.

``import qfair`` is cheap: torch, onnx, onnxruntime, triton, tensorrt and matplotlib are imported
only when a feature that needs them is used. Public entry points are resolved lazily below:
``load_model``, ``quantize`` (with ``QuantConfig`` and ``calibration_batches``), ``save_quantized`` /
``load_quantized``, ``open_benchmark``, ``evaluate`` / ``compare``, ``export_onnx`` and ``kd_finetune``;
the subpackages (``qfair.quant``, ``qfair.eval``, ``qfair.export``, ``qfair.train``, ``qfair.data``) hold the rest.
"""
from __future__ import annotations

from qfair.utils.lazy import lazy_exports

from ._version import __version__

# public name -> "module:attribute"
_LAZY = {
    "create_model": "qfair.models:create_model",
    "load_model": "qfair.models:load_model",
    "list_models": "qfair.models:list_models",
    "quantize": "qfair.quant:quantize",
    "prepare": "qfair.quant:prepare",
    "save_quantized": "qfair.quant:save_quantized",
    "load_quantized": "qfair.quant:load_quantized",
    "QuantConfig": "qfair.quant:QuantConfig",
    "QfairError": "qfair.utils.errors:QfairError",
    # the rest of a study, so ``qfair.<TAB>`` shows it: calibration data, evaluation, export, KD fine-tuning
    "calibration_batches": "qfair.data:calibration_batches",
    "open_benchmark": "qfair.data:open_benchmark",
    "evaluate": "qfair.eval:evaluate",
    "compare": "qfair.eval:compare",
    "export_onnx": "qfair.export:export_onnx",
    "kd_finetune": "qfair.train:kd_finetune",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
