"""Activation ranges during fine-tuning: track for the first N steps, then freeze; DDP sync; LSQ.

Uses ``qfair.quant``'s quantizer modes (``ActQuantizer.track()`` = observe and quantize with the
running range, ``.freeze()`` = fix the range, ``.enable_lsq()`` = learnable scale). Weight quantizers
recompute their range from the weights every forward (QuantFace, README references [5]) and are left
alone by tracking.

Observers are plain objects outside the state dict, so :func:`range_state` / :func:`load_range_state`
carry their statistics through a checkpoint (a resume during the tracking phase must continue from
the same running min/max).

Distributed: under DDP each rank sees a different shard. :class:`synced_ranges` wraps every tracking
observer so that it observes what one process with the GLOBAL batch would: min/max observers (minmax,
ema) get the global min and max (an all_reduce MIN/MAX, two numbers per channel); histogram observers
(percentile, mse, entropy), whose range depends on every value, get the whole global batch (an
all_gather of the shards, during the tracking steps only). The reference code instead kept rank 0's
ranges (torch's DDP broadcasts buffers from rank 0). A NaN / Inf in one process's activations stops every
process at the same layer and step (the processes agree on it before each observer's collective).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..utils.errors import NonFiniteError


def _quant():
    from .. import quant  # the quantization package (prepare, quantizers)

    return quant


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, quantizer) for quantizers whose range comes from observed activations."""
    from ..quant.quantizer import ActQuantizer, WeightQuantizer

    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer) and not isinstance(m, WeightQuantizer) and not m.dynamic:
            yield name, m


def all_quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from ..quant.quantizer import ActQuantizer

    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            yield name, m


def is_quantized(model: nn.Module) -> bool:
    try:
        return any(True for _ in all_quantizers(model))
    except ImportError:  # quant package not available
        return False


def _seed_observer(q: nn.Module) -> None:
    """A quantizer loaded from disk has a calibrated scale but an empty observer: start the running
    range from the calibrated range so tracking widens it instead of forgetting it."""
    obs = q.observer
    if getattr(obs, "min_val", 0) is None and q.calibrated and q.axis is None:
        lo = (q.qmin - q.zero_point.detach()) * q.scale.detach()
        hi = (q.qmax - q.zero_point.detach()) * q.scale.detach()
        obs.observe(torch.stack([lo.reshape(()), hi.reshape(())]).float())


def set_range_tracking(model: nn.Module, tracking: bool) -> int:
    """Activation quantizers observe + quantize (True) or keep a fixed range (False). Returns the count."""
    n = 0
    for _, q in act_quantizers(model):
        if tracking:
            _seed_observer(q)
            q.track()
        else:
            q.freeze()
        n += 1
    return n


def enable_learnable_scales(model: nn.Module) -> list[nn.Parameter]:
    """LSQ on every quantizer (``ActQuantizer.enable_lsq``); returns the new scale parameters."""
    params = []
    for _, q in all_quantizers(model):
        q.enable_lsq()
        params.append(q.scale)
    return params


# ---------------------------------------------------------------------------- observer state
def _pack(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_pack(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {"__fields__": {k: _pack(v) for k, v in vars(obj).items() if not callable(v)}}
    raise TypeError(f"cannot checkpoint observer field of type {type(obj).__name__}")


def _unpack_into(obj: Any, packed: dict[str, Any]) -> None:
    for k, v in packed["__fields__"].items():
        cur = getattr(obj, k, None)
        if isinstance(v, dict) and "__fields__" in v and cur is not None and hasattr(cur, "__dict__"):
            _unpack_into(cur, v)
        else:
            setattr(obj, k, v)


def range_state(model: nn.Module) -> dict[str, Any]:
    """Observer statistics and modes of every activation quantizer (tensors and plain values)."""
    out = {}
    for name, q in act_quantizers(model):
        out[name] = {"observer": _pack(q.observer), "observer_enabled": bool(q.observer_enabled),
                     "fake_quant_enabled": bool(q.fake_quant_enabled), "calibrated": bool(q.calibrated)}
    return out


def load_range_state(model: nn.Module, state: dict[str, Any]) -> None:
    for name, q in act_quantizers(model):
        if name in state:
            s = state[name]
            _unpack_into(q.observer, s["observer"])
            q.observer_enabled, q.fake_quant_enabled = s["observer_enabled"], s["fake_quant_enabled"]
            q.calibrated = s["calibrated"]


# ---------------------------------------------------------------------------- DDP synchronisation
def _extremes_tensor(lo: torch.Tensor, hi: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A small tensor whose min/max (per channel along ``axis``) are exactly ``lo``/``hi``."""
    if axis is None or lo.dim() == 0:
        return torch.stack([lo.reshape(()), hi.reshape(())])
    pair = torch.stack([lo, hi], dim=1)  # (C, 2)
    if axis == 0:
        return pair
    return pair.t().reshape([2] + [1] * (axis - 1) + [lo.numel()])


def _gather_batches(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The shards of every rank concatenated along the batch dimension (B_total, ...); shards may differ
    in batch size (the last batch of an epoch)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    most = int(max(int(s) for s in sizes))
    padded = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))]) if x.shape[0] < most else x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


class _GlobalObserver:
    """Observer proxy: feed the wrapped observer what one process with the global batch would see (the
    global min/max for min/max observers, the gathered batch for histogram observers)."""

    def __init__(self, inner: Any, group: Any = None) -> None:
        self.inner, self.group = inner, group

    def observe(self, x: torch.Tensor) -> None:
        import torch.distributed as dist

        from ..quant.math import reduce_minmax
        from ..quant.observers import MinMaxObserver

        if not isinstance(self.inner, MinMaxObserver):  # percentile / mse / entropy: every value counts
            self.inner.observe(_gather_batches(x.detach(), self.group))
            return
        lo, hi = reduce_minmax(x.float(), self.inner.axis)
        both = torch.stack([-lo, hi])
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        self.inner.observe(_extremes_tensor(-both[0], both[1], self.inner.axis).to(x.device))

    def __getattr__(self, name: str) -> Any:  # compute_range, reset, min_val...
        return getattr(self.inner, name)


class PeerNonFiniteError(NonFiniteError):
    """Another process's input to this quantizer was NaN / Inf (this one's was finite): raised by every
    process but the bad one(s), so that all stop at the same layer; ``processes``: how many were bad."""

    def __init__(self, message: str, *, role: str, layer: str, processes: int) -> None:
        super().__init__(message, role=role, layer=layer)
        self.processes = processes


class synced_ranges:
    """Context manager: while active, tracking observers of ``model`` see global min/max across ranks.

    Under DDP (world > 1) each wrapped quantizer also gets a forward pre-hook through which the processes agree,
    before the observer's collective, that no process's input is NaN / Inf (:meth:`_agree_finite`): the process
    whose input is non-finite goes on into the quantizer, which raises its ``NonFiniteError``; every other
    process raises a PeerNonFiniteError (same role and layer) instead of waiting in the observer's collective for a
    process that has left. So all processes stop at the same layer of the same step."""

    def __init__(self, model: nn.Module, group: Any = None, active: bool = True) -> None:
        self.model, self.group, self.active = model, group, active
        self._wrapped: list[nn.Module] = []
        self._hooks: list[Any] = []

    def __enter__(self) -> synced_ranges:
        if self.active:
            for _, q in act_quantizers(self.model):
                if not isinstance(q.observer, _GlobalObserver):
                    q.observer = _GlobalObserver(q.observer, self.group)
                    self._wrapped.append(q)
            if _world(self.group) > 1:
                self._hooks = [q.register_forward_pre_hook(self._agree_finite) for q in self._wrapped]
        return self

    def _agree_finite(self, q: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook (a collective while ``q`` observes): raise ``q``'s NonFiniteError when another
        process's input to ``q`` is non-finite and this one's is not."""
        if not q.observer_enabled or not args or not isinstance(args[0], torch.Tensor):
            return
        from .distributed import ranks_flagging

        x = args[0]
        own = not bool(torch.isfinite(x).all())
        others = ranks_flagging(own, x.device, self.group) - int(own)
        if others and not own:
            raise PeerNonFiniteError(f"NaN or Inf reached the {q.role} of layer '{q.layer}' in {others} other "
                                     "process(es) while its range was recorded; the run diverged (lower the "
                                     "learning rate)", role=q.role, layer=q.layer, processes=others)
        # own input non-finite: the quantizer's own check raises (the others raise here, at the same layer)

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for q in self._wrapped:
            q.observer = q.observer.inner
        self._wrapped.clear()


def _world(group: Any = None) -> int:
    """Processes in ``group`` (1 without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1
