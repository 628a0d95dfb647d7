"""Quantizer modules: hold scale / zero point, drive an observer, apply ``qfair::fake_quant``.

Modes (plain attributes, recorded in quant.json):

- ``observer_enabled``: every forward feeds the observer (calibration; NaN/Inf raise naming the layer);
- ``fake_quant_enabled``: quantize (off during PTQ calibration so every layer sees float inputs);
  with both on (QAT's "running min/max for the first steps"), the range is recomputed every forward;
- ``dynamic``: the range is the tensor's own min/max at every forward (QuantFace weights; README
  references [5]) -- used for weights, which change during fine-tuning.

The state dict holds ``scale`` and ``zero_point`` (0-d per-tensor, (C,) per-channel); after
:meth:`ActQuantizer.enable_lsq` the scale is a learnable parameter under the same key.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.errors import NonFiniteError, QuantError
from .fake_quant import fake_quant, grad_scale
from .math import check_bits, compute_qparams, qrange, reduce_minmax
from .observers import Observer, make_observer


def _batch_minmax(x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    """``reduce_minmax(x, axis)``, per channel as ``amin`` and ``amax``: the same values, several times faster
    than ``aminmax(dim=1)`` on CPU (which matters for dynamic weight ranges, recomputed every step)."""
    if axis is None or axis < 0:
        return reduce_minmax(x)
    flat = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)  # (C, rest)
    return flat.amin(1), flat.amax(1)


class ActQuantizer(nn.Module):
    """Fake quantizer for a tensor: ``bits``, ``symmetric``, ``axis`` (None = per-tensor), ``qmin/qmax``.

    ``channels`` is required per-channel (the length of ``scale``). ``layer`` is the module name it
    serves (set by ``prepare``) and ``role`` says which tensor ("weight", "input", "output", "skip").
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, *, axis: int | None = None,
                 channels: int | None = None, narrow: bool = False, observer: str = "minmax",
                 observer_options: dict[str, Any] | None = None, dynamic: bool = False,
                 layer: str = "", role: str = "output") -> None:
        super().__init__()
        check_bits(bits, f"bits of quantizer {layer or role}")
        if axis is not None and not channels:
            raise QuantError(f"per-channel quantizer {layer or role} needs the channel count")
        self.bits, self.symmetric, self.narrow, self.axis = int(bits), bool(symmetric), bool(narrow), axis
        self.qmin, self.qmax = qrange(self.bits, self.symmetric, self.narrow)
        shape = (int(channels),) if axis is not None else ()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self.observer_name = observer
        self.observer_options = dict(observer_options or {})
        self.observer = make_observer(observer, self.qmin, self.qmax, self.symmetric, axis, **self.observer_options)
        self.layer, self.role = layer, role
        self.dynamic = bool(dynamic)
        self.observer_enabled = False
        self.fake_quant_enabled = True
        self.calibrated = False
        self.lsq = False

    # ------------------------------------------------------------------ state
    def set_range(self, lo: Tensor, hi: Tensor) -> None:
        """Set scale / zero point from a range (0-d or (C,))."""
        scale, zp = compute_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape).to(self.scale.device))
            self.zero_point.copy_(zp.reshape(self.zero_point.shape).to(self.zero_point.device))
        self.calibrated = True

    def calibrate(self) -> None:
        """Observe without quantizing (PTQ calibration)."""
        self.observer.reset()
        self.observer_enabled, self.fake_quant_enabled = True, False

    def track(self) -> None:
        """Observe and quantize with the running range (QAT warm-up: ranges still move)."""
        self.observer_enabled, self.fake_quant_enabled = True, True

    def freeze(self) -> None:
        """Stop observing; set the range from what was observed (if anything); quantize."""
        if self.observer_enabled and not self.dynamic:
            try:
                lo_hi = self.observer.compute_range()
            except QuantError as exc:
                raise QuantError(f"{self.role} quantizer of layer '{self.layer}': {exc}") from None
            self.set_range(*lo_hi)
        self.observer_enabled, self.fake_quant_enabled = False, True

    def make_static(self) -> None:
        """A dynamic (weight) quantizer keeps its last range from now on (for export / AdaRound)."""
        self.dynamic = False

    def disable(self) -> None:
        self.observer_enabled, self.fake_quant_enabled = False, False

    def enable_lsq(self) -> None:
        """Make the scale learnable (LSQ); the zero point stays fixed."""
        if not self.lsq:
            scale = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(scale)
            self.dynamic, self.lsq = False, True

    # ------------------------------------------------------------------ forward
    def _check_channels(self, x: Tensor) -> None:
        """A per-channel quantizer's tensor must have its channel axis, of the length of ``scale``."""
        if self.axis is not None and (x.dim() <= self.axis or x.shape[self.axis] != self.scale.numel()):
            got = f"shape {tuple(x.shape)}"
            raise QuantError(f"{self.role} quantizer of layer '{self.layer}' is per-channel along axis {self.axis} "
                             f"with {self.scale.numel()} channels, got a tensor of {got}; the layer's channel count "
                             "changed after prepare (prepare the model again) or the model was built with other widths")

    def forward(self, x: Tensor) -> Tensor:
        batch_range = None
        self._check_channels(x)
        if x.numel() == 0:  # an empty batch (a last or per-process shard with no images): no range to observe
            return x if not self.fake_quant_enabled else self._quantize(x)
        if self.observer_enabled:
            # the batch min / max, one pass: a NaN or Inf anywhere shows up in them
            batch_range = lo, hi = _batch_minmax(x, self.axis)
            if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
                raise NonFiniteError(f"NaN or Inf reached the {self.role} of layer '{self.layer}' while its range was "
                                     "recorded; in calibration, check the calibration images (normalised to [-1, 1]?) "
                                     "and the checkpoint; in training, the run diverged (lower the learning rate)",
                                     role=self.role, layer=self.layer)
            if isinstance(self.observer, Observer):  # hand them over (a wrapping proxy gets plain observe(x))
                self.observer.observe(x, (lo.float(), hi.float()))
            else:
                self.observer.observe(x)
            if self.fake_quant_enabled and not self.dynamic:
                self.set_range(*self.observer.compute_range())
        if self.dynamic:
            self.set_range(*(batch_range if batch_range is not None else _batch_minmax(x, self.axis)))
        if not self.fake_quant_enabled:
            return x
        return self._quantize(x)

    def _quantize(self, x: Tensor) -> Tensor:
        """``qfair::fake_quant`` with the current scale and zero point (LSQ's gradient scaling on a learnt scale)."""
        scale = self.scale
        if self.lsq:
            scale = grad_scale(scale, 1.0 / math.sqrt(max(x.numel() // scale.numel(), 1) * max(self.qmax, 1)))
        axis = -1 if self.axis is None else self.axis
        return fake_quant(x, scale, self.zero_point, self.qmin, self.qmax, axis)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (quant.json)."""
        return {
            "layer": self.layer, "role": self.role, "bits": self.bits, "symmetric": self.symmetric,
            "narrow": self.narrow, "axis": self.axis, "qmin": self.qmin, "qmax": self.qmax,
            "observer": self.observer_name, "observer_options": self.observer_options, "dynamic": self.dynamic,
            "lsq": self.lsq, "calibrated": self.calibrated,
            "mode": "observe" if self.observer_enabled else ("quantize" if self.fake_quant_enabled else "off"),
            "scale": self.scale.detach().cpu().reshape(-1).tolist(),
            "zero_point": [int(z) for z in self.zero_point.detach().cpu().reshape(-1).tolist()],
        }

    def extra_repr(self) -> str:
        gran = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, {kind}, {gran}, observer={self.observer_name}, dynamic={self.dynamic}"


class WeightQuantizer(ActQuantizer):
    """Quantizer for a weight tensor (``role="weight"``); dynamic min/max by default."""

    def __init__(self, bits: int = 8, symmetric: bool = False, **kw: Any) -> None:
        kw.setdefault("role", "weight")
        super().__init__(bits, symmetric, **kw)

    def init_from(self, weight: Tensor) -> None:
        """Set a static range from the weight itself (observed once; dynamic quantizers need not)."""
        if not bool(torch.isfinite(weight).all()):  # else: scale 1 and a NaN zero point for that channel, silently
            bad = int((~torch.isfinite(weight)).sum())
            raise NonFiniteError(f"the weight of layer '{self.layer}' holds {bad} NaN / Inf value(s); its range cannot "
                                 "be set. The checkpoint is damaged or came from a diverged run: load another one",
                                 role=self.role, layer=self.layer)
        self.observer.reset()
        self.observer.observe(weight.detach())
        self.set_range(*self.observer.compute_range())
        self.observer.reset()  # free raw copies held by histogram observers

    def calibrate(self) -> None:
        # weights are already quantized while the activations are calibrated
        self.observer_enabled, self.fake_quant_enabled = False, True

    def track(self) -> None:
        self.observer_enabled, self.fake_quant_enabled = False, True

    def freeze(self) -> None:
        self.observer_enabled, self.fake_quant_enabled = False, True


def iter_quantizers(model: nn.Module):
    """Yield (module name, quantizer) for every quantizer in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            yield name, m
