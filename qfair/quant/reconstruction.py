"""Reconstruction-based PTQ: learned rounding (AdaRound) per layer or per residual block (BRECQ).

A *unit* is reconstructed at a time, in forward order: a residual block (a module that owns a
``ResidualAdd``; BRECQ, Li et al. ICLR 2021) or a single quantized conv / linear (AdaRound, Nagel et
al. ICML 2020; also every layer that lies in no block). For each unit:

1. its input is captured from the quantized model, with every earlier unit already reconstructed
   (so the unit learns to absorb the error that reaches it);
2. the target is the *float* model's output of that unit, captured once on the same images before
   anything changed (``target="float"``, BRECQ's choice), or the unit with its quantizers off on the
   quantized input (``target="local"``: fix this unit's own error only);
3. each weight quantizer gets a static per-output-channel range ``r * [min, max]``, the ratio r picked
   per channel to minimise the layer's output error (at 4 bits and below plain min/max wastes levels
   on rare large weights, while minimising the *weight* error over-clips: clipping errors add up
   coherently in the output, rounding errors do not);
4. Adam optimises the soft rounding of every weight in the unit (``adaround.SoftRounding``) and the
   log step size of every activation quantizer in it (LSQ-style, zero points fixed) on
   ``(out - target)^2`` summed over channels, averaged over images and positions, plus the rounding
   regulariser with beta annealed 20 -> 2 after a warm-up; optionally QDrop (Wei et al. ICLR 2022):
   each activation element skips its quantization with probability ``drop`` during optimisation;
5. the weights are replaced by their hard-rounded grid values. ``holdout`` (a quarter) of the images
   take no part in steps 3-4; on them, the state with the lowest unit error wins among {as calibrated,
   new range + nearest rounding, learned}. This guard matters: a unit with far more weights than
   constraints (iresnet's embedding FC: 3.2M weights, 48 images) fits its calibration images and
   loses on new ones, and the held-out images reject it.

The weight quantizers of reconstructed units become static (their grid is fixed: recomputing min/max
from rounded weights would move it). Cost: ``iters`` forward/backward passes of one unit on ``batch``
images per unit.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..models._layers import ResidualAdd
from ..utils.errors import QuantError
from ..utils.progress import track
from .adaround import SoftRounding, search_weight_range
from .fake_quant import fake_quant
from .layers import weight_layers
from .math import reduce_minmax
from .quantizer import ActQuantizer, WeightQuantizer, iter_quantizers


@dataclass(frozen=True)
class ReconSettings:
    """Hyper-parameters of one reconstruction (defaults tuned on iresnet18 / 64 images, CPU budget)."""

    iters: int = 200          # optimisation steps per unit
    batch: int = 8            # images per step
    lr: float = 1e-2          # Adam, rounding variables V
    act_lr: float = 1e-2      # Adam, log step size of the activation quantizers (0: keep calibrated ranges)
    reg: float = 0.01         # weight of the rounding regulariser
    warmup: float = 0.2       # fraction of the steps without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)  # regulariser exponent, annealed linearly after the warm-up
    drop: float = 0.0         # QDrop: probability of skipping an activation's quantization while optimising
    target: str = "float"     # "float" (the float model's unit output) or "local" (this unit's error only)
    range_search: bool = True  # output-aware per-channel weight range before rounding
    range_grid: int = 16      # candidate clipping ratios in [0.25, 1]
    holdout: float = 0.25     # share of the images kept out of the optimisation to choose the final state

    def __post_init__(self) -> None:
        if self.target not in ("float", "local"):
            raise QuantError(f"reconstruction target must be 'float' or 'local', got {self.target!r}")
        if (self.iters < 0 or self.batch < 1 or not 0 <= self.drop < 1 or not 0 <= self.warmup < 1
                or not 0 <= self.holdout < 1):
            raise QuantError(f"bad reconstruction settings: {self}")


class _Stop(Exception):
    pass


def _under(name: str, parent: str) -> bool:
    return parent == "" or name == parent or name.startswith(parent + ".")


def find_units(qmodel: nn.Module, granularity: str = "block") -> dict[str, nn.Module]:
    """Reconstruction units, name -> module (module order): residual blocks ("block") and every quantized
    layer outside them; "layer": every quantized conv / linear on its own."""
    if granularity not in ("block", "layer"):
        raise QuantError(f"reconstruction granularity must be 'block' or 'layer', got {granularity!r}")
    layers = dict(weight_layers(qmodel))
    units: dict[str, nn.Module] = {}
    blocks: list[str] = []
    for name, m in qmodel.named_modules():  # parents come before their children
        if any(_under(name, b) for b in blocks):
            continue
        if (granularity == "block" and any(isinstance(c, ResidualAdd) for c in m.children())
                and any(_under(n, name) for n in layers)):
            blocks.append(name)
            units[name] = m
        elif name in layers:
            units[name] = m
    return units


def _forward_order(qmodel: nn.Module, units: dict[str, nn.Module], x: Tensor) -> tuple[list[str], dict[str, str]]:
    """Units in the order a forward pass calls them; units that cannot be reconstructed -> reason."""
    calls: dict[str, int] = {}
    bad: dict[str, str] = {}

    def make_hook(name: str):
        def hook(m, args, kwargs):
            calls[name] = calls.get(name, 0) + 1
            if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
                bad[name] = "called with other than one tensor argument"
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n), with_kwargs=True) for n, m in units.items()]
    try:
        with torch.no_grad():
            qmodel(x)
    finally:
        for h in handles:
            h.remove()
    for n in units:
        if calls.get(n, 0) == 0:
            bad[n] = "not reached by the forward pass"
        elif calls[n] > 1:
            bad[n] = f"called {calls[n]} times per forward pass"
    return [n for n in calls if n not in bad], bad


def _reference_units(reference: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The modules of the float ``reference`` (a copy of the quantized model) with these names, in eval
    mode (also used by the PTQ corrections in ``improve.py``)."""
    mods = dict(reference.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise QuantError(f"the float reference has no layer '{missing[0]}': it must be a copy of the quantized "
                         f"model taken before the PTQ improvements (as `quantize` keeps one)")
    reference.eval()
    return {n: mods[n] for n in names}


def _chunks(x: Tensor, size: int = 32):
    for i in range(0, x.shape[0], size):
        yield x[i:i + size]


def _capture_inputs(qmodel: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """Input of ``module`` when ``qmodel`` runs on ``x`` (stops there; chunks of 32 images)."""
    box: list[Tensor] = []

    def hook(m, args):
        box.append(args[0].detach())
        raise _Stop

    h = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for xb in _chunks(x):
                try:
                    qmodel(xb)
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat(box)


def _capture_outputs(qmodel: nn.Module, units: dict[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    """Output of every unit on ``x`` (one full pass per chunk)."""
    box: dict[str, list[Tensor]] = {n: [] for n in units}
    handles = [m.register_forward_hook(lambda m, a, out, n=n: box[n].append(out.detach())) for n, m in units.items()]
    try:
        with torch.no_grad():
            for xb in _chunks(x):
                qmodel(xb)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in box.items() if v}


def _rec_error(y: Tensor, t: Tensor) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over images and positions."""
    d = (y - t).pow(2)
    return d.sum(1).mean() if d.dim() > 1 else d.mean()


# ---------------------------------------------------------------------------- one unit


class _UnitState:
    """Saves / restores what reconstruction may change in a unit: weight and activation quantizer ranges."""

    def __init__(self, quantizers: list[ActQuantizer]) -> None:
        self.saved = [(q, q.scale.detach().clone(), q.zero_point.detach().clone(), q.dynamic) for q in quantizers]

    @torch.no_grad()
    def restore(self) -> None:
        for q, s, z, dyn in self.saved:
            q.scale.copy_(s)
            q.zero_point.copy_(z)
            q.dynamic = dyn


def reconstruct_unit(unit: nn.Module, x_in: Tensor, y_ref: Tensor, st: ReconSettings,
                     generator: torch.Generator | None = None) -> dict[str, float]:
    """Reconstruct one unit in place (module docstring, steps 3-5). ``x_in``: its inputs (N, ...) from the
    quantized model; ``y_ref``: the targets (N, ...). Returns the unit error (``_rec_error`` on the
    held-out images, all N without holdout) as calibrated (``before``), with the new ranges and nearest
    rounding (``nearest``) and the final one (``after``), and which state was kept (``kept``)."""
    layers = list(weight_layers(unit))
    acts = [q for q in unit.modules() if isinstance(q, ActQuantizer) and not isinstance(q, WeightQuantizer)
            and q.fake_quant_enabled and not q.observer_enabled]
    state = _UnitState([m.weight_quantizer for _, m in layers] + acts)
    n_all = x_in.shape[0]
    n_val = int(st.holdout * n_all) if n_all >= 4 else 0
    n = n_all - n_val  # optimise on x_in[:n]; judge on x_in[n:] (all images when there is no holdout)
    x_val, y_val = (x_in[n:], y_ref[n:]) if n_val else (x_in, y_ref)

    @torch.no_grad()
    def error(params: dict[str, Tensor] | None = None) -> float:
        tot = 0.0
        for i in range(0, x_val.shape[0], 32):
            y = functional_call(unit, params or {}, (x_val[i:i + 32],))
            tot += float(_rec_error(y, y_val[i:i + 32])) * y.shape[0]
        return tot / x_val.shape[0]

    before = error()
    # 3. static weight ranges (output-aware search on the inputs each layer sees inside the unit)
    for name, layer in layers:
        wq = layer.weight_quantizer
        if st.range_search:
            sub = x_in[: min(n, 16)]  # (from the optimisation share)
            x_l = _capture_inputs(unit, layer, sub) if layer is not unit else sub
            search_weight_range(layer, x_l, st.range_grid)
        elif wq.dynamic:
            wq.set_range(*reduce_minmax(layer.weight, wq.axis))
            wq.make_static()
    nearest = error()
    if st.iters == 0:
        kept = "nearest" if nearest <= before else "before"
        if kept == "before":
            state.restore()
        return {"before": before, "nearest": nearest, "after": min(before, nearest), "kept": kept}

    # 4. optimise rounding and activation step sizes
    rounders = {name: SoftRounding(layer) for name, layer in layers}
    pname = {name: f"{name}.weight" if name else "weight" for name in rounders}
    log_s = {q: torch.zeros_like(q.scale, requires_grad=True) for q in acts} if st.act_lr > 0 else {}
    mode = {"train": False}

    def act_hook(q: ActQuantizer):
        def hook(m, args, out):
            x = args[0]
            s = q.scale.detach() * torch.exp(log_s[q]) if q in log_s else q.scale.detach()
            y = fake_quant(x, s, q.zero_point.detach(), q.qmin, q.qmax, -1 if q.axis is None else q.axis)
            if mode["train"] and st.drop > 0:
                keep_float = torch.rand(x.shape, generator=generator, device=x.device) < st.drop
                y = torch.where(keep_float, x, y)
            return y
        return hook

    handles = [q.register_forward_hook(act_hook(q)) for q in acts]
    for q in acts:
        q.fake_quant_enabled = False  # the hook quantizes instead (learnable step, QDrop)
    for _, layer in layers:
        layer.weight_quantizer.fake_quant_enabled = False  # soft weights pass through unchanged
    groups = [{"params": [r.v for r in rounders.values()], "lr": st.lr}]
    if log_s:
        groups.append({"params": list(log_s.values()), "lr": st.act_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda i: 1.0] + [
        lambda i: 0.5 * (1 + math.cos(math.pi * i / st.iters))] * (len(groups) - 1))
    warm = int(st.warmup * st.iters)
    try:
        mode["train"] = True
        with torch.enable_grad():  # quantize() may run under torch.no_grad(); this loop needs gradients
            for it in range(st.iters):
                idx = torch.randint(0, n, (min(st.batch, n),), generator=generator, device=x_in.device)
                y = functional_call(unit, {pname[k]: r.weight("soft") for k, r in rounders.items()}, (x_in[idx],))
                loss = _rec_error(y, y_ref[idx])
                if it >= warm:
                    beta = st.beta[0] + (st.beta[1] - st.beta[0]) * (it - warm) / max(st.iters - warm, 1)
                    loss = loss + st.reg * sum(r.regularizer(beta) for r in rounders.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        mode["train"] = False
        after = error({pname[k]: r.weight("hard") for k, r in rounders.items()})
    finally:
        for h in handles:
            h.remove()
        for q in acts:
            q.fake_quant_enabled = True
        for _, layer in layers:
            layer.weight_quantizer.fake_quant_enabled = True

    # 5. keep the best of: as calibrated, new ranges + nearest, learned
    kept = min((after, "learned"), (nearest, "nearest"), (before, "before"))[1]
    if kept == "learned":
        with torch.no_grad():
            for q, ls in log_s.items():
                q.scale.mul_(torch.exp(ls))
        for r in rounders.values():
            r.commit("hard")
    elif kept == "before":
        state.restore()
    return {"before": before, "nearest": nearest, "after": min(before, nearest, after), "kept": kept}


# ---------------------------------------------------------------------------- whole model


def reconstruct(qmodel: nn.Module, batches: list[Tensor], *, granularity: str = "block", iters: int = 200,
                samples: int = 64, seed: int = 0, reference: nn.Module | None = None,
                **settings: Any) -> dict[str, dict[str, Any]]:
    """Reconstruct every unit of a calibrated fake-quant model in place (module docstring).

    ``reference``: the float model the targets come from, a copy of ``qmodel`` as calibrated with its
    quantizers off (``quantize`` passes one after an earlier PTQ improvement has changed ``qmodel``);
    by default ``qmodel`` itself with its quantizers off.

    ``batches``: calibration images (B, 3, H, W); the first ``samples`` are used. ``settings``: fields of
    :class:`ReconSettings`. Returns unit name -> errors (see :func:`reconstruct_unit`) plus ``seconds``;
    units that cannot be reconstructed are listed in ``qmodel.qfair_quant["reconstruction"]["skipped"]``.
    """
    known = {f.name for f in fields(ReconSettings)}
    unknown = set(settings) - known
    if unknown:
        raise QuantError(f"unknown reconstruction settings {sorted(unknown)}; known: {sorted(known)}")
    st = ReconSettings(iters=iters, **settings)
    if not batches:
        return {}
    dev = next(qmodel.parameters()).device
    x = torch.cat(list(batches))[:samples].to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    units = find_units(qmodel, granularity)
    modes = {q: (q.fake_quant_enabled, q.observer_enabled) for _, q in iter_quantizers(qmodel)}
    was = qmodel.training
    qmodel.eval()
    report: dict[str, dict[str, Any]] = {}
    try:
        order, skipped = _forward_order(qmodel, units, x[:2])
        chosen = {n: units[n] for n in order}
        targets: dict[str, Tensor] = {}
        ref_units = {} if reference is None else _reference_units(reference, order)
        if st.target == "float" and reference is not None:
            targets = _capture_outputs(reference, ref_units, x)
        elif st.target == "float":
            for q in modes:
                q.fake_quant_enabled, q.observer_enabled = False, False
            targets = _capture_outputs(qmodel, chosen, x)
            for q, (fq, _) in modes.items():
                q.fake_quant_enabled = fq
        for name in track(order, f"{granularity} reconstruction"):
            t0 = time.perf_counter()
            unit = units[name]
            x_in = _capture_inputs(qmodel, unit, x)
            if st.target == "float":
                y_ref = targets.pop(name)
            elif reference is not None:  # the float unit on the quantized input
                with torch.no_grad():
                    y_ref = torch.cat([ref_units[name](xb) for xb in _chunks(x_in)])
            else:
                inner = [q for q in unit.modules() if isinstance(q, ActQuantizer)]
                on = [q.fake_quant_enabled for q in inner]
                for q in inner:
                    q.fake_quant_enabled = False
                with torch.no_grad():
                    y_ref = torch.cat([unit(xb) for xb in _chunks(x_in)])
                for q, f in zip(inner, on):
                    q.fake_quant_enabled = f
            report[name] = {**reconstruct_unit(unit, x_in, y_ref, st, g),
                            "seconds": time.perf_counter() - t0}
    finally:
        for q, (fq, ob) in modes.items():
            q.fake_quant_enabled, q.observer_enabled = fq, ob
        qmodel.train(was)
    meta = getattr(qmodel, "qfair_quant", None)
    if isinstance(meta, dict):
        meta["reconstruction"] = {
            "granularity": granularity, "units": len(report), "skipped": skipped,
            "kept": {k: sum(r["kept"] == k for r in report.values()) for k in ("learned", "nearest", "before")},
            "error_ratio_mean": float(sum(r["after"] / max(r["before"], 1e-30) for r in report.values())
                                      / max(len(report), 1)),
            "settings": {f.name: getattr(st, f.name) for f in fields(ReconSettings)},
        }
    return report


def brecq(qmodel: nn.Module, batches: list[Tensor], *, iters: int = 200, samples: int = 64, seed: int = 0,
          **settings: Any) -> dict[str, dict[str, Any]]:
    """BRECQ: block-wise reconstruction (residual blocks, plus every layer outside a block)."""
    return reconstruct(qmodel, batches, granularity="block", iters=iters, samples=samples, seed=seed, **settings)
