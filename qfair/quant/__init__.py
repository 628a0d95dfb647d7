"""Quantization core: math, observers, the ``qfair::fake_quant`` op, quantized layers, placement
recipes, PTQ with low-bit improvements, save / load and sensitivity analysis.

Public API: ``QuantConfig``, ``prepare(model, cfg)``, ``quantize(model, cfg, calib_batches)``,
``save_quantized(model, run_dir)``, ``load_quantized(run_dir)``, ``rebuild_quantized(quant_json, state_dict)``,
``iter_quantizers(model)``,
``sensitivity(model, cfg, calib_batches, eval_fn=None)``, ``freeze_for_export(model)``.
The ONNX translation of the fake-quant op lives with the exporter (``qfair.export.translation``).

Names resolve lazily so ``import qfair.quant.config`` (used by the CLI to build flags) stays free of torch.
"""
from __future__ import annotations

from qfair.utils.lazy import lazy_exports

_LAZY = {
    "QuantConfig": "config", "QuantizeRunConfig": "config", "PTQ_METHODS": "config",
    "fake_quant": "fake_quant",
    "QuantConv2d": "layers", "QuantLinear": "layers", "QuantPReLU": "layers", "QuantResidualAdd": "layers",
    "fold_bn_into": "layers", "weight_layers": "layers",
    "OBSERVERS": "observers", "Observer": "observers", "make_observer": "observers",
    "calibrate": "ptq", "quantize": "ptq", "set_quantizers": "ptq",
    "ActQuantizer": "quantizer", "WeightQuantizer": "quantizer", "iter_quantizers": "quantizer",
    "RECIPES": "recipes", "fold_batchnorm": "recipes", "prepare": "recipes",
    "PTQ_IMPROVEMENTS": "improve",
    "load_quantized": "serialize", "rebuild_quantized": "serialize", "save_quantized": "serialize",
    "quant_summary": "serialize",
    "sensitivity": "sensitivity_analysis", "overrides_yaml": "sensitivity_analysis",
    "freeze_for_export": "ptq",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, {k: f"qfair.quant.{v}:{k}" for k, v in _LAZY.items()})
