"""PTQ improvements for low bit widths, registered in :data:`PTQ_IMPROVEMENTS` (``cfg.ptq`` names them).

Each takes (fake-quant model, calibration image batches, cfg) and edits the model in place. The float
reference is the *same* model with its quantizers switched off, so folded BatchNorms and skipped layers
are handled for free.

- ``bias_correction``: empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"): every
  quantized conv / linear gets bias += E[y_float] - E[y_quant] per output channel, measured on the
  calibration images (all layers at once, one float and one quantized pass).
- ``bn_reestimate``: BatchNorm re-estimation: the running statistics of every BatchNorm left in the
  model are re-computed under quantization (cumulative average over the calibration images), so they
  match the shifted activations the quantized network produces.
- ``adaround``: learned rounding (Nagel et al. 2020, "Up or Down?"), layer by layer;
- ``brecq``: learned rounding and activation step sizes, residual block by residual block (Li et al.
  2021), against the float model's block outputs; see ``reconstruction.py`` (both use it).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..utils.progress import track
from ..utils.registry import Registry
from .config import QuantConfig
from .layers import weight_layers
from .ptq import run_batches, set_quantizers

PTQ_IMPROVEMENTS: Registry[Callable[[nn.Module, list, QuantConfig], None]] = Registry("PTQ improvement")


def _channel_means(model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """Mean output per output channel of each layer over the batches: name -> (Cout,)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(m, args, out):
            dims = [d for d in range(out.dim()) if d != 1]
            sums[name] = sums.get(name, 0) + out.detach().double().sum(dim=dims)
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in sums}


@PTQ_IMPROVEMENTS.register("bias_correction")
@torch.no_grad()
def bias_correction(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig) -> None:
    layers = dict(weight_layers(qmodel))
    set_quantizers(qmodel, False)
    ref = _channel_means(qmodel, layers, batches)
    set_quantizers(qmodel, True)
    got = _channel_means(qmodel, layers, batches)
    for name, m in layers.items():
        if name not in ref:
            continue
        delta = (ref[name] - got[name]).to(m.weight.device, m.weight.dtype)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=m.weight.requires_grad)
        m.bias.add_(delta)


@PTQ_IMPROVEMENTS.register("bn_reestimate", aliases=("bn_recalibration",))
@torch.no_grad()
def bn_reestimate(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig) -> None:
    bns = [m for m in qmodel.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    was = qmodel.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    try:
        qmodel.eval()
        for m in bns:
            m.train()
        dev = next(qmodel.parameters()).device
        for x in track(batches, "re-estimating BatchNorm"):
            if x.shape[0] > 1:  # BatchNorm cannot take statistics of a single image
                qmodel(x.to(dev))
    finally:
        for m, mom in saved:
            m.momentum = mom
        qmodel.train(was)


@PTQ_IMPROVEMENTS.register("adaround")
def _adaround(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig) -> None:
    from .adaround import adaround

    adaround(qmodel, batches, iters=cfg.adaround_iters, samples=cfg.adaround_samples, seed=cfg.seed)


@PTQ_IMPROVEMENTS.register("brecq")
def _brecq(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig) -> None:
    from .reconstruction import brecq

    brecq(qmodel, batches, iters=cfg.adaround_iters, samples=cfg.adaround_samples, seed=cfg.seed)
