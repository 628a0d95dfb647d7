"""qfair: compress face recognition models to 8 and 6 bits and measure, group by group,
what the compression did to fairness.

``import qfair`` is cheap: torch, onnx, onnxruntime, triton, tensorrt and matplotlib are imported
only when a feature that needs them is used. Public entry points are resolved lazily below.
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
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
