"""qfair: compress face recognition models to 8 and 6 bits and measure, group by group,
what the compression did to fairness.

``import qfair`` is cheap: torch, onnx, onnxruntime, triton, tensorrt and matplotlib are imported
only when a feature that needs them is used. Public entry points are resolved lazily below.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

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


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'qfair' has no attribute '{name}'")
    mod, attr = target.split(":")
    value = getattr(import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
