"""AdaRound: learned up/down rounding of the weights (Nagel et al., ICML 2020).

A layer's weights sit on its quantizer's grid as ``s * (floor(w / s) + h - z)`` with one soft rounding
variable per weight, h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) (the rectified sigmoid),
initialised so that h equals the float remainder w / s - floor(w / s) (the soft weights start at the
float weights). V is optimised so that the layer's (or block's, see ``reconstruction.py``) output
matches the float one, plus the regulariser sum(1 - |2h - 1|^beta), beta annealed 20 -> 2, which
pushes every h to 0 or 1. The final weights round down where V < 0 and up otherwise.

:func:`adaround` reconstructs every quantized conv / linear on its own (layer-wise, the AdaRound paper);
:func:`qfair.quant.reconstruction.brecq` does the same per residual block (BRECQ).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import QuantConv2d, QuantLinear
from .math import compute_qparams, fake_quantize_ref, reduce_minmax

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: Tensor) -> Tensor:
    """h(V) in [0, 1], exactly 0 or 1 beyond |V| ~ 2.4."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


class SoftRounding(nn.Module):
    """The learnable rounding of one layer's weight on its weight quantizer's grid.

    The quantizer must be static (its scale / zero point are read once). ``weight(mode)`` gives the
    weight tensor for ``"soft"`` (differentiable in V), ``"hard"`` (V >= 0 rounds up) or ``"nearest"``
    (plain rounding, the baseline) rounding; :meth:`commit` writes one of them into the layer.
    """

    def __init__(self, layer: QuantConv2d | QuantLinear) -> None:
        super().__init__()
        wq = layer.weight_quantizer
        assert not wq.dynamic, "SoftRounding needs a static weight grid"
        w = layer.weight.detach()
        shape = [-1] + [1] * (w.dim() - 1) if wq.axis is not None else []  # (Cout, 1, ...) per-channel
        self.layer, self.qmin, self.qmax = layer, wq.qmin, wq.qmax
        self.register_buffer("s", wq.scale.detach().reshape(shape).clone())
        self.register_buffer("z", wq.zero_point.detach().reshape(shape).clone())
        self.register_buffer("w_floor", torch.floor(w / self.s))
        rest = (w / self.s - self.w_floor).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("rest", rest)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(V) == rest at start

    def h(self) -> Tensor:
        return rectified_sigmoid(self.v)

    def weight(self, mode: str = "soft") -> Tensor:
        if mode == "soft":
            up = self.h()
        elif mode == "hard":
            up = (self.v.detach() >= 0).to(self.s.dtype)
        elif mode == "nearest":
            up = (self.rest >= 0.5).to(self.s.dtype)
        else:
            raise ValueError(f"rounding mode must be soft, hard or nearest, got {mode!r}")
        return (torch.clamp(self.w_floor + up + self.z, self.qmin, self.qmax) - self.z) * self.s

    def regularizer(self, beta: float) -> Tensor:
        """sum(1 - |2h - 1|^beta): 0 when every h is 0 or 1."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def commit(self, mode: str = "hard") -> None:
        """Replace the layer's weight by its rounded grid values (the static quantizer keeps them)."""
        self.layer.weight.copy_(self.weight(mode))


@torch.no_grad()
def search_weight_range(layer: QuantConv2d | QuantLinear, x: Tensor, grid: int = 16) -> Tensor:
    """Set ``layer``'s weight quantizer (made static) to the range ``r * [min, max]`` whose nearest-rounded
    weights give the smallest output error on inputs ``x``, r in [0.25, 1] per output channel (per
    tensor for a per-tensor quantizer). Returns the chosen ratios."""
    wq = layer.weight_quantizer
    w = layer.weight.detach()
    lo, hi = reduce_minmax(w, wq.axis)
    if layer.input_quantizer is not None:
        x = layer.input_quantizer(x)
    dims = [d for d in range(x.dim()) if d != 1]
    best_err = torch.full(lo.shape, math.inf, device=w.device)
    best = torch.ones(lo.shape, device=w.device)
    for r in torch.linspace(0.25, 1.0, grid).tolist():
        scale, zp = compute_qparams(lo * r, hi * r, wq.qmin, wq.qmax, wq.symmetric)
        dw = fake_quantize_ref(w, scale.to(w.device), zp.to(w.device), wq.qmin, wq.qmax, wq.axis) - w
        err = _plain_forward(layer, x, dw, bias=False).pow(2).sum(dims)  # output error (Cout,): linear in dw
        err = err if wq.axis is not None else err.sum()
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, torch.full_like(best, r), best)
    wq.set_range(lo * best, hi * best)
    wq.make_static()
    return best


def _plain_forward(layer: nn.Module, x: Tensor, w: Tensor, bias: bool = True) -> Tensor:
    b = layer.bias if bias else None
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(x, w, b)
    return nn.functional.linear(x, w, b)


def adaround(qmodel: nn.Module, batches: list[Tensor], *, iters: int = 200, samples: int = 64, seed: int = 0,
             reference: nn.Module | None = None, **settings) -> dict[str, dict[str, float]]:
    """AdaRound every quantized conv / linear of ``qmodel`` on its own, in forward order.

    Each layer's output (on its inputs as the partly reconstructed quantized model produces them) is
    matched to the float model's output at that layer; ``settings`` go to
    :func:`qfair.quant.reconstruction.reconstruct`. Returns per-layer calibration errors: ``"nearest"``
    (plain rounding on the initial grid) and ``"adaround"`` (learned rounding).
    """
    from .reconstruction import reconstruct

    report = reconstruct(qmodel, batches, granularity="layer", iters=iters, samples=samples, seed=seed,
                         reference=reference, **settings)
    return {k: {**r, "adaround": r["after"]} for k, r in report.items()}
