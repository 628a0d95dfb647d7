"""The fake-quant op ``qfair::fake_quant`` (a ``torch.library`` custom op; README references [8]).

Signature (kept simple so every exporter can translate it)::

    fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor

- ``scale``: float, 0-d (per-tensor) or (C,) with C = x.shape[axis] (per-channel).
- ``zero_point``: float tensor holding integers, same shape as ``scale``.
- ``axis``: the channel axis (>= 0) for per-channel parameters, ``-1`` for per-tensor.
- forward (ONNX QuantizeLinear then DequantizeLinear, round half to even, saturation)::

      y = (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale

  per-tensor on the CPU computed as ``clamp(round(x / s), qmin - z, qmax - z) * s + 0``, bit for bit the same:
  ``z`` is an integer, so clamping the code before adding ``z`` gives the same integers (where
  ``round(x / s) + z`` is inexact, beyond 2**24, both saturate on the same side), and the ``+ 0`` turns the
  ``-0.0`` of ``round(-0.3)`` into the ``+0.0`` that ``(q - z) * s`` gives -- four memory passes, not six.
  ``x / s`` stays a true division as in QuantizeLinear: ATen's fused fake-quant kernels multiply by
  ``1 / s``, which rounds some values next to a half-integer the other way (and they are scalar loops on
  CPU, slower than the passes they would replace).
- backward: straight-through estimator with the clipping mask for ``x``
  (dy/dx = 1 where qmin <= round(x/s) + z <= qmax, else 0, exactly the forward's codes; masked entries get 0
  even where ``grad`` is not finite, as in torch's clamp / hardtanh backward); when ``scale`` requires grad, the LSQ
  gradient (Esser et al. 2020): dy/ds = round(x/s) - x/s inside the range, (qmin - z) below, (qmax - z)
  above, reduced to the scale's shape (LSQ's 1/sqrt(N * qmax) gradient scaling is applied by the
  module, see ``quantizer.py``); when ``zero_point`` requires grad (LSQ+): dy/dz = 0 inside, -s outside.

ONNX export: ``qfair.export.translation.translation_table()`` is the ``custom_translation_table`` for
``torch.onnx.export(..., dynamo=True)``: the op becomes ``QuantizeLinear -> DequantizeLinear`` (int8 for
signed ranges, uint8 for unsigned) with the same scale, zero point and ``axis`` when per-channel; for
sub-8-bit ranges a clip to ``[(qmin - z) * s, (qmax - z) * s]`` precedes the QuantizeLinear so the int8
Q/DQ computes exactly the 6-bit grid (README references [8]). Call ``qfair.quant.freeze_for_export`` (or
the exporter's ``freeze_copy``) first, so dynamic weight ranges become constants.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_LIB = "qfair"
_ZERO = torch.zeros(())  # the 0 of ``0 + s * codes`` (CPU, per-tensor forward)


def _shape(x: Tensor, t: Tensor, axis: int) -> Tensor:
    """Broadcast ``t`` (0-d or (C,)) against ``x`` along ``axis``."""
    if axis < 0 or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


# half-precision inputs (CUDA autocast) are quantized in float32 and the result cast back: in float16 the scale
# itself would be rounded (a different grid from the float32 one the model is evaluated and exported with), x / s
# would be off by up to ~0.1 of a step at 8 bits (more in bfloat16), and a scale below 6e-8 would become 0 (NaN)
_UPCAST = (torch.float16, torch.bfloat16)


@torch.library.custom_op(f"{_LIB}::fake_quant", mutates_args=())
def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor:
    """See the module docstring. Device-generic: the same values on every device (the CPU per-tensor path
    only picks faster kernels). float16 / bfloat16 ``x`` is computed in float32, the result cast back."""
    if x.dtype in _UPCAST:
        return _forward(x.float(), scale, zero_point, qmin, qmax, axis).to(x.dtype)
    return _forward(x, scale, zero_point, qmin, qmax, axis)


def _forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor:
    s = _shape(x, scale.to(x.dtype), axis)
    codes = torch.div(x, s).round_()  # round(x / s), a fresh tensor: the remaining steps run in place
    if x.device.type == "cpu" and scale.numel() == 1 and zero_point.numel() == 1:
        # per-tensor on the CPU: plain-number bounds and factor select the fastest kernels (.item() is free)
        z, sf = float(zero_point), float(s)
        codes.clamp_(qmin - z, qmax - z)
        if sf > 0:  # 0 + s * codes in one pass (the + 0: module docstring)
            return torch.add(_ZERO, codes, alpha=sf, out=codes)
        return codes.add_(0.0).mul_(s)
    # per-channel (and off the CPU): the formula as written; with tensor bounds, clamp_ is the slow step
    z = _shape(x, zero_point.to(x.dtype), axis)
    return codes.add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)


@fake_quant.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor:
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    x, scale, zero_point, qmin, qmax, axis = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.qmin, ctx.qmax, ctx.axis = qmin, qmax, axis


def _reduce_to(g: Tensor, like: Tensor, axis: int) -> Tensor:
    """Sum a full-shape gradient down to a 0-d or (C,) parameter's shape."""
    if like.dim() == 0 or axis < 0:
        return g.sum().reshape(like.shape)
    dims = [d for d in range(g.dim()) if d != axis]
    return g.sum(dim=dims).reshape(like.shape)


_NP_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _first_true(pred, v, dtype, steps: int = 64):
    """Smallest float ``u`` of ``dtype`` with ``pred(u)``, for ``pred`` False below some float and True from it on,
    searched one float at a time from ``v`` (which must lie within ``steps`` floats of it); None if not found."""
    down, up = dtype(-np.inf), dtype(np.inf)
    if pred(v):
        for _ in range(steps):
            u = np.nextafter(v, down)
            if not pred(u):
                return v
            v = u
        return None
    for _ in range(steps):
        v = np.nextafter(v, up)
        if pred(v):
            return v
    return None


def _x_bounds(scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, dtype) -> tuple[float, float] | None:
    """Floats ``(a, b)`` with ``a < x < b  <=>  qmin <= round(x / scale) + zero_point <= qmax`` for every ``x`` of
    ``dtype`` (NaN aside), or None where they cannot be found (scale not a positive normal number...).

    For a scale > 0, x -> round(x / scale) is monotone (IEEE division rounds monotonically), so the codes in
    range come from one interval of floats. Its ends lie within a float or two of (qmin - z - 1/2) s and
    (qmax - z + 1/2) s and are found by stepping from there, evaluating the same correctly rounded division
    and round-half-to-even as the tensor kernels in numpy scalars of the same dtype: exact, ties included.
    """
    s, z = dtype(float(scale)), float(zero_point)
    if not (np.isfinite(s) and s >= np.finfo(dtype).tiny):
        return None
    lo, hi = qmin - z, qmax - z
    with np.errstate(all="ignore"):
        start_lo, start_hi = dtype((lo - 0.5) * float(s)), dtype((hi + 0.5) * float(s))
        if not (np.isfinite(start_lo) and np.isfinite(start_hi)):
            return None
        first_in = _first_true(lambda v: np.rint(v / s) >= lo, start_lo, dtype)  # smallest x with code >= lo
        first_above = _first_true(lambda v: np.rint(v / s) > hi, start_hi, dtype)  # smallest x with code > hi
        if first_in is None or first_above is None:
            return None
        below = np.nextafter(first_in, dtype(-np.inf))
    if not (np.isfinite(below) and np.isfinite(first_above)):
        return None
    return float(below), float(first_above)


def _readable(t: Tensor) -> bool:
    """A real tensor (not a fake / functional one seen while tracing), so its value may be read."""
    return type(t) in (Tensor, torch.nn.Parameter)


def _backward(ctx, grad: Tensor):
    x, scale, zero_point = ctx.saved_tensors
    if x.dtype in _UPCAST:  # the forward ran in float32 (see _UPCAST): the mask and LSQ terms must too
        gx, gs, gz, *rest = _backward_float(ctx, grad.float(), x.float(), scale, zero_point)
        return (gx.to(grad.dtype) if gx is not None else None), gs, gz, *rest
    return _backward_float(ctx, grad, x, scale, zero_point)


def _backward_float(ctx, grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor):
    qmin, qmax, axis = ctx.qmin, ctx.qmax, ctx.axis
    lsq = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    np_dtype = _NP_FLOATS.get(x.dtype)
    if not lsq and np_dtype is not None and x.device.type == "cpu" and scale.numel() == 1 \
            and zero_point.numel() == 1 and _readable(scale) and _readable(zero_point):
        bounds = _x_bounds(scale.to(x.dtype), zero_point, qmin, qmax, np_dtype)
        if bounds is not None:
            # STE mask as bounds on x itself: one vectorised pass over (grad, x), no division
            return torch.ops.aten.hardtanh_backward(grad, x, *bounds), None, None, None, None, None
    s = _shape(x, scale.to(x.dtype), axis)
    z = _shape(x, zero_point.to(x.dtype), axis)
    gx = gs = gz = None
    if lsq:  # the LSQ(+) formulas need x / s and its rounding as well
        xs = x / s
        r = torch.round(xs)
        q = r + z
    else:
        q = torch.div(x, s).round_().add_(z)
    # q = round(x / s) + z: the forward's integer code before saturation, recomputed (the op has one output)
    if ctx.needs_input_grad[0]:
        # STE: grad where qmin <= q <= qmax (q holds integers, so strict bounds half a step out), else 0;
        # one vectorised pass, written into q's buffer when nothing else needs q
        bounds = (qmin - 0.5, qmax + 0.5)
        gx = torch.ops.aten.hardtanh_backward(grad, q, *bounds) if lsq else \
            torch.ops.aten.hardtanh_backward.grad_input(grad, q, *bounds, grad_input=q)
    if not lsq:
        return gx, None, None, None, None, None
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    if ctx.needs_input_grad[1]:
        ds = torch.where(inside, r - xs, torch.where(below, qmin - z, qmax - z))
        gs = _reduce_to(grad * ds, scale, axis).to(scale.dtype)
    if ctx.needs_input_grad[2]:
        dz = torch.where(inside, torch.zeros_like(xs), -s.expand_as(xs))
        gz = _reduce_to(grad * dz, zero_point, axis).to(zero_point.dtype)
    return gx, gs, gz, None, None, None


fake_quant.register_autograd(_backward, setup_context=_setup_context)


def grad_scale(t: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` (LSQ's gradient scaling)."""
    scaled = t * factor
    return t.detach() + (scaled - scaled.detach())  # forward: exactly t (x - x == 0); backward: factor
