"""Pure quantization math: integer ranges, range -> (scale, zero point), quantize, dequantize.

Semantics follow ONNX ``QuantizeLinear`` / ``DequantizeLinear`` (README references [8])::

    q = saturate(round_half_to_even(x / scale) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

Shapes: ``scale`` and ``zero_point`` are 0-d (per-tensor) or 1-d of length ``x.shape[axis]``
(per-channel). Zero points are stored as float tensors holding integers (so they can travel through
autograd and ``torch.compile`` with the scale); :func:`quantize` returns int32.

Every range is widened to contain 0 (so 0 and zero padding are exact), and a zero-width range gets
scale 1: a constant channel quantizes exactly, with no division by zero.
"""
from __future__ import annotations

import torch

from ..utils.errors import QuantError

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width (2..8); raise QuantError naming ``what`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range: signed for symmetric (int8: -128..127, narrow -127..127), unsigned otherwise
    (uint8: 0..255, narrow 1..255)."""
    check_bits(bits)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    return (qmin + 1 if narrow else qmin), qmax


def channel_shape(x: torch.Tensor, axis: int | None) -> list[int]:
    """Shape that broadcasts a per-channel (C,) vector against ``x`` along ``axis``; [] per-tensor."""
    if axis is None or axis < 0:
        return []
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return shape


def reduce_minmax(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``: 0-d tensors per-tensor, (C,) along ``axis`` per-channel."""
    if axis is None or axis < 0:
        return torch.aminmax(x.detach())
    flat = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)  # (C, rest)
    return torch.aminmax(flat, dim=1)


def compute_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Range [lo, hi] (same shapes) -> (scale, zero_point), float32, same shape as ``lo``.

    Symmetric: zero point 0 (signed range), scale = max(|lo|, |hi|) / qmax (TensorRT's amax / 127).
    Asymmetric: scale = (hi - lo) / (qmax - qmin), zero point = qmin - round(lo / scale), clamped.
    """
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)  # range always contains 0
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    if symmetric:
        if qmin >= 0:
            raise QuantError(f"symmetric quantization needs a signed integer range, got [{qmin}, {qmax}]")
        amax = torch.maximum(-lo, hi)
        scale = amax / float(qmax)
        zero_point = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        # hi - lo overflows float32 beyond 3.4e38 (a range of +-2e38 is finite, its width is not): divide first there
        scale = torch.where(torch.isinf(scale), hi / float(qmax - qmin) - lo / float(qmax - qmin), scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero range: any scale is exact
    if not symmetric:
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


def _bcast(x: torch.Tensor, t: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = t.to(dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    return t.reshape(channel_shape(x, axis)) if t.dim() > 0 and axis is not None and axis >= 0 else t


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
             axis: int | None = None) -> torch.Tensor:
    """ONNX QuantizeLinear: int32 tensor of ``x``'s shape."""
    s, z = _bcast(x, scale, axis), _bcast(x, zero_point, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
               ) -> torch.Tensor:
    """ONNX DequantizeLinear: float32 tensor of ``q``'s shape."""
    qf = q.to(torch.float32)
    return (qf - _bcast(qf, zero_point, axis)) * _bcast(qf, scale, axis)


def fake_quantize_ref(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                      axis: int | None = None) -> torch.Tensor:
    """Reference fake quantization ``dequantize(quantize(x))`` in ``x``'s dtype (no autograd rules)."""
    s, z = _bcast(x, scale, axis), _bcast(x, zero_point, axis)
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def quant_error(x: torch.Tensor, lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> float:
    """Mean squared error of fake-quantizing ``x`` with range [lo, hi] (used by tests and search)."""
    scale, zp = compute_qparams(torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric)
    return float(((fake_quantize_ref(x.float(), scale, zp, qmin, qmax) - x.float()) ** 2).mean())
