"""AdaRound: learned up/down rounding of the weights, layer by layer (Nagel et al., ICML 2020).

For each quantized conv / linear, in module order: its input as the (partly quantized) model sees it
is captured on ``samples`` calibration images; a soft rounding variable V per weight,
h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), is optimised with Adam so that
layer(x_q; s * (floor(w / s) + h - z)) matches layer(x_q; w) (float weights, same inputs), plus the
regulariser lambda * sum(1 - |2h - 1|^beta) with beta annealed 20 -> 2 that pushes h to 0 or 1.
Finally the weights are replaced by their hard-rounded grid values and the weight quantizer becomes
static (its grid is fixed; recomputing min/max from the rounded weights would move it).

CPU-cheap by design: few hundred steps, mini-batches of 4 images per step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.progress import track
from .layers import QuantConv2d, QuantLinear, weight_layers
from .math import reduce_minmax
from .ptq import set_quantizers

ZETA, GAMMA = 1.1, -0.1


class _Stop(Exception):
    pass


def _capture(model: nn.Module, layer: nn.Module, x: Tensor, want: str) -> Tensor:
    """Run ``model`` on ``x`` until ``layer``; return its input ("in") or output ("out")."""
    box: list[Tensor] = []

    def hook(m, args, out):
        box.append((args[0] if want == "in" else out).detach())
        raise _Stop

    h = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return box[0]


def _forward(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(x, w, layer.bias)
    return F.linear(x, w, layer.bias)


def _h(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround_layer(layer: QuantConv2d | QuantLinear, x_in: Tensor, y_ref: Tensor | None = None, *, iters: int = 200,
                   batch: int = 4, lr: float = 1e-2, reg: float = 0.01, warmup: float = 0.2,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """Optimise one layer's rounding in place; ``x_in``: its inputs (N, ...) as the quantized model sees
    them. ``y_ref``: reconstruction targets; default (None): the layer's output with its *float* weights on
    those same (input-quantized) inputs, i.e. the objective ||W x - W~ x||^2 of Nagel et al."""
    wq = layer.weight_quantizer
    w = layer.weight.detach()
    if wq.dynamic:
        wq.set_range(*reduce_minmax(w, wq.axis))
    wq.make_static()
    shape = [-1] + [1] * (w.dim() - 1) if wq.axis is not None else []
    s = wq.scale.detach().reshape(shape)
    z = wq.zero_point.detach().reshape(shape)
    w_floor = torch.floor(w / s)
    rest = (w / s - w_floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)  # h(v) == rest at start
    opt = torch.optim.Adam([v], lr=lr)
    iq = layer.input_quantizer

    def weights(h: Tensor) -> Tensor:
        return (torch.clamp(w_floor + h + z, wq.qmin, wq.qmax) - z) * s

    def recon(idx: Tensor | None, wt: Tensor) -> Tensor:
        xb, yb = (x_in, y_ref) if idx is None else (x_in[idx], y_ref[idx])
        with torch.no_grad():
            xb = iq(xb) if iq is not None else xb
        return (_forward(layer, xb, wt) - yb).pow(2).flatten(1).sum(1).mean()

    if y_ref is None:
        with torch.no_grad():
            y_ref = _forward(layer, iq(x_in) if iq is not None else x_in, w)
    with torch.no_grad():
        nearest = float(recon(None, weights((w / s - w_floor >= 0.5).float())))
    n = x_in.shape[0]
    for it in range(iters):
        idx = torch.randint(0, n, (min(batch, n),), generator=generator)
        h = _h(v)
        loss = recon(idx, weights(h))
        if it >= warmup * iters:
            beta = 20 + (2 - 20) * (it - warmup * iters) / max(iters * (1 - warmup), 1)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        hard = weights((v >= 0).float())
        learned = float(recon(None, hard))
        if learned >= nearest:  # never worse than nearest rounding on the layer's own objective
            hard, learned = weights((w / s - w_floor >= 0.5).float()), nearest
        layer.weight.copy_(hard)
    return {"nearest": nearest, "adaround": learned}


def adaround(qmodel: nn.Module, batches: list[Tensor], *, iters: int = 200, samples: int = 64, seed: int = 0
             ) -> dict[str, dict[str, float]]:
    """AdaRound every quantized conv / linear of ``qmodel`` (module order); returns per-layer output
    errors (sum of squares per image) with nearest rounding and with the learned rounding."""
    if not batches:
        return {}
    g = torch.Generator().manual_seed(seed)
    dev = next(qmodel.parameters()).device
    x = torch.cat([b for b in batches])[:samples].to(dev)
    was = qmodel.training
    qmodel.eval()
    report = {}
    try:
        for name, layer in track(list(weight_layers(qmodel)), "adaround"):
            # target: this layer's float-weight output on its own quantized-model inputs. (The float
            # model's output at this layer, taken with all quantizers off, is not a valid target: it
            # already contains the earlier layers' rounded weights, and asking one layer's rounding to
            # undo the upstream activation-quantization error over-fits the few calibration images.)
            x_in = _capture(qmodel, layer, x, "in")
            report[name] = adaround_layer(layer, x_in, None, iters=iters, generator=g)
    finally:
        set_quantizers(qmodel, True)
        qmodel.train(was)
    if report:
        gain = [r["adaround"] / max(r["nearest"], 1e-30) for r in report.values()]
        qmodel.qfair_quant["adaround_error_ratio_mean"] = float(sum(gain) / len(gain))
    return report
