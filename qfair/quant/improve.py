"""PTQ improvements for low bit widths, registered in :data:`PTQ_IMPROVEMENTS` (``cfg.ptq`` names them).

Each takes (fake-quant model, calibration image batches, cfg, reference=None) and edits the model in
place. The float reference is the model as calibrated, before any improvement, with its quantizers
switched off (so folded BatchNorms and skipped layers are handled for free): ``reference`` when given,
else the model itself with its quantizers off, which is the same thing only before an improvement has
changed it. Every improvement changes what the model computes with its quantizers off (biases, BatchNorm
statistics, weights rounded onto the grid), so ``quantize`` keeps a copy as calibrated and passes it to
each when ``cfg.ptq`` names more than one. (Demo MobileFaceNet W6A6, 128 calibration images, cosine to
float on held-out images: 0.984 plain, 0.991 with either ``bias_correction`` or ``bn_reestimate``, but
0.985 with both when the second measured against the model the first had corrected; 0.991-0.992 now.)

- ``bias_correction``: empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"): every
  quantized conv / linear gets bias += E[y_float] - E[y_quant] per output channel, measured on the
  calibration images layer by layer in execution order, each with the layers before it already
  corrected. (Measured all at once, each layer would also remove the upstream shift that the upstream
  corrections already removed: on the demo MobileFaceNet at W6A6 that took the cosine to the float
  model from 0.984 to 0.758.) Cost: one float pass, then one quantized pass over all calibration
  images as one batch, each layer corrected in a hook as the pass reaches it; where that batch would
  not fit ``ONE_PASS_BYTES``, one partial quantized pass per layer instead (same result).
- ``bn_reestimate``: BatchNorm re-estimation: the running statistics of every BatchNorm left in the
  model are moved by the shift and rescaling that quantization causes at its input, measured on the
  calibration images (quantized vs float input, per channel, over all images at once), BatchNorm by
  BatchNorm in execution order. Only the quantization-induced change is transferred: statistics
  recomputed from scratch on a few hundred calibration images would also import how those images
  differ from the training set (demo MobileFaceNet, float, 256 images: cosine to itself 0.977 from
  recomputed statistics, 0.927 when each batch held 4 identities, as identity-ordered data does).
- ``adaround``: learned rounding (Nagel et al. 2020, "Up or Down?"), layer by layer;
- ``brecq``: learned rounding and activation step sizes, residual block by residual block (Li et al.
  2021), against the float model's block outputs; see ``reconstruction.py`` (both use it).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..utils.errors import QuantError
from ..utils.progress import track
from ..utils.registry import Registry
from .config import QuantConfig
from .layers import weight_layers
from .ptq import as_images, set_quantizers

PTQ_IMPROVEMENTS: Registry[Callable[..., None]] = Registry("PTQ improvement")


class _Moments:
    """Per-channel sum and sum of squares (float64) of a tensor stream; channels on dim 1."""

    def __init__(self) -> None:
        self.s1: torch.Tensor | int = 0
        self.s2: torch.Tensor | int = 0
        self.n = 0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double()
        dims = [d for d in range(t.dim()) if d != 1]
        self.s1 = self.s1 + t.sum(dim=dims)
        self.s2 = self.s2 + (t * t).sum(dim=dims)
        self.n += t.numel() // t.shape[1]

    def mean(self) -> torch.Tensor:  # (C,)
        return self.s1 / self.n  # type: ignore[operator]

    def var(self) -> torch.Tensor:  # (C,) population variance over every image and position
        return (self.s2 / self.n - self.mean() ** 2).clamp_min(0.0)  # type: ignore[operator]


def _moments(model: nn.Module, modules: dict[str, nn.Module], batches: list[torch.Tensor], *, inputs: bool,
             stop_after: str | None = None) -> dict[str, _Moments]:
    """Per-channel moments of each module's output (or first input) over the batches (``n`` 0 for a
    module that never ran). ``stop_after`` names one module at which every pass stops."""
    from .reconstruction import _Stop  # lazy, as brecq below: keeps `import qfair.quant` cheap

    stats = {n: _Moments() for n in modules}

    def make_hook(name: str):
        def hook(m, args, out=None):
            stats[name].add(args[0] if inputs else out)
            if name == stop_after:
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) if inputs else m.register_forward_hook(make_hook(n))
               for n, m in modules.items()]
    was, dev = model.training, next(model.parameters()).device
    try:
        model.eval()
        for b in batches:
            try:
                model(as_images(b).to(dev))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return stats


# The corrections run as one forward pass over every calibration image at once when the largest
# activation of that pass, times this margin for the tensors alive beside it, fits in ONE_PASS_BYTES
# (None: a quarter of the device's free memory, at most 8 GiB); otherwise as one partial pass per
# corrected module (same result, cost quadratic in depth).
ONE_PASS_BYTES: int | None = None
_MARGIN = 4


def _one_pass_budget(dev: torch.device) -> int:
    if ONE_PASS_BYTES is not None:
        return ONE_PASS_BYTES
    try:
        if dev.type == "cuda":
            free = torch.cuda.mem_get_info(dev)[0]
        else:
            import os

            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError, RuntimeError):  # no sysconf (Windows), other devices
        free = 4 << 30
    return min(free // 4, 8 << 30)


def _largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes per image of the largest tensor any module of ``model`` returns on the batch ``x``."""
    peak = [0]

    def hook(m, args, out):
        if isinstance(out, torch.Tensor) and out.dim() and out.shape[0]:
            peak[0] = max(peak[0], out.numel() // out.shape[0] * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return peak[0]


def _sequential(qmodel: nn.Module, modules: dict[str, nn.Module], batches: list[torch.Tensor], *, inputs: bool,
                what: str, correct: Callable[[str, nn.Module, _Moments, _Moments], None],
                reference: nn.Module | None = None) -> None:
    """Measure every module on the float model (``reference``, else ``qmodel`` with its quantizers off),
    then correct the modules one by one in execution order, each from quantized statistics over all
    images that already see the corrections before it. ``correct(name, module, float_moments,
    quantized_moments)`` edits the module in place.

    Done in one quantized pass over all images as one batch (each module corrected in a hook as the pass
    reaches it, before its output goes on) when that fits the memory budget (ONE_PASS_BYTES), else one
    pass over the batches per module, stopping at it."""
    from .reconstruction import _forward_order, _reference_units

    was, dev = qmodel.training, next(qmodel.parameters()).device
    try:
        qmodel.eval()
        first = as_images(batches[0]).to(dev)
        # modules called exactly once per forward, in call order; the others (never run, or shared and
        # called several times) are left as they are
        order, _ = _forward_order(qmodel, modules, first)
        set_quantizers(qmodel, False)
        with torch.no_grad():
            per_image = _largest_activation(qmodel, first[:1])
        if reference is None:
            ref = _moments(qmodel, {n: modules[n] for n in order}, batches, inputs=inputs)  # before any change
    finally:
        set_quantizers(qmodel, True)
        qmodel.train(was)
    if reference is not None:
        same = _reference_units(reference, order)
        ref = _moments(reference, same, batches, inputs=inputs)
    n_images = sum(as_images(b).shape[0] for b in batches)
    if n_images * per_image * _MARGIN <= _one_pass_budget(dev):
        _one_pass(qmodel, modules, order, batches, inputs=inputs, what=what, ref=ref, correct=correct)
        return
    for name in track(order, what):
        got = _moments(qmodel, {name: modules[name]}, batches, inputs=inputs, stop_after=name)[name]
        if not got.n:
            raise QuantError(_not_run(what, name))
        correct(name, modules[name], ref[name], got)


def _not_run(what: str, name: str) -> str:
    return (f"{what}: layer '{name}' ran in the float pass but not in the quantized one; "
            f"the model's forward must not depend on whether it is quantized")


def _one_pass(qmodel: nn.Module, modules: dict[str, nn.Module], order: list[str], batches: list[torch.Tensor], *,
              inputs: bool, what: str, ref: dict[str, _Moments],
              correct: Callable[[str, nn.Module, _Moments, _Moments], None]) -> None:
    """``_sequential`` as one quantized forward over every image: a hook corrects each module when the pass
    reaches it (before its input is used, for ``inputs``; else from its output, which it then recomputes
    with the correction so the modules after it see it)."""
    dev = next(qmodel.parameters()).device
    x = torch.cat([as_images(b) for b in batches]).to(dev)  # (N, 3, H, W)
    done: list[str] = []
    progress = iter(track(order, what))

    def measured(name: str, m: nn.Module, t: torch.Tensor) -> None:
        got = _Moments()
        got.add(t)
        correct(name, m, ref[name], got)
        done.append(name)
        next(progress, None)

    def make_hook(name: str):
        if inputs:
            def pre_hook(m, args):
                measured(name, m, args[0])
            return pre_hook

        def hook(m, args, out):
            measured(name, m, out)
            return m.forward(*args)  # with the correction in place; hooks do not run again
        return hook

    handles = [modules[n].register_forward_pre_hook(make_hook(n)) if inputs
               else modules[n].register_forward_hook(make_hook(n)) for n in order]
    was = qmodel.training
    try:
        qmodel.eval()
        qmodel(x)
    finally:
        for h in handles:
            h.remove()
        qmodel.train(was)
        for _ in progress:  # close the progress bar
            pass
    missing = [n for n in order if n not in done]
    if missing:
        raise QuantError(_not_run(what, missing[0]))


@PTQ_IMPROVEMENTS.register("bias_correction")
@torch.no_grad()
def bias_correction(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig | None,
                    reference: nn.Module | None = None) -> None:
    def correct(name: str, m: nn.Module, f: _Moments, q: _Moments) -> None:
        delta = (f.mean() - q.mean()).to(m.weight.device, m.weight.dtype)  # (Cout,)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=m.weight.requires_grad)
        m.bias.add_(delta)

    _sequential(qmodel, dict(weight_layers(qmodel)), batches, inputs=False, what="bias correction", correct=correct,
                reference=reference)


@PTQ_IMPROVEMENTS.register("bn_reestimate", aliases=("bn_recalibration",))
@torch.no_grad()
def bn_reestimate(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig | None,
                  reference: nn.Module | None = None) -> None:
    bns = {n: m for n, m in qmodel.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_var is not None}
    if not bns:
        return

    def correct(name: str, m: nn.Module, f: _Moments, q: _Moments) -> None:
        # running stats (mu, s) -> (mu', s') with (x_q - mu') / s' matching the mean and spread that
        # (x_f - mu) / s has on the calibration images: s' = s r, mu' = m_q - (m_f - mu) r, r = sd_q / sd_f
        s = (m.running_var.double() + m.eps).sqrt()
        r = torch.where(f.var() > 0, (q.var() / f.var().clamp_min(1e-300)).sqrt(), torch.ones_like(s))
        var = ((s * r) ** 2 - m.eps).clamp_min(0.0)
        # the BN divides by sqrt(var + eps) >= sqrt(eps), which is more than s r where the quantized spread
        # collapsed (a channel squeezed onto one code: r = 0); the mean is matched with the ratio it really uses
        r_eff = (var + m.eps).sqrt() / s
        mu = q.mean() - (f.mean() - m.running_mean.double()) * r_eff
        m.running_mean.copy_(mu.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))

    _sequential(qmodel, bns, batches, inputs=True, what="re-estimating BatchNorm", correct=correct,
                reference=reference)


@PTQ_IMPROVEMENTS.register("adaround")
def _adaround(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig,
              reference: nn.Module | None = None) -> None:
    from .adaround import adaround

    adaround(qmodel, batches, iters=cfg.adaround_iters, samples=cfg.adaround_samples, seed=cfg.seed,
             reference=reference)


@PTQ_IMPROVEMENTS.register("brecq")
def _brecq(qmodel: nn.Module, batches: list[torch.Tensor], cfg: QuantConfig,
           reference: nn.Module | None = None) -> None:
    from .reconstruction import brecq

    brecq(qmodel, batches, iters=cfg.adaround_iters, samples=cfg.adaround_samples, seed=cfg.seed,
          reference=reference)
