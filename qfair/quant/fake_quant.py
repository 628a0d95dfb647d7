"""The fake-quant op ``qfair::fake_quant`` (a ``torch.library`` custom op; FACTS.md section 8).

Signature (kept simple so every exporter can translate it)::

    fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor

- ``scale``: float, 0-d (per-tensor) or (C,) with C = x.shape[axis] (per-channel).
- ``zero_point``: float tensor holding integers, same shape as ``scale``.
- ``axis``: the channel axis (>= 0) for per-channel parameters, ``-1`` for per-tensor.
- forward (ONNX QuantizeLinear then DequantizeLinear, round half to even, saturation)::

      y = (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale

- backward: straight-through estimator with the clipping mask for ``x``
  (dy/dx = 1 where qmin <= round(x/s) + z <= qmax, else 0); when ``scale`` requires grad, the LSQ
  gradient (Esser et al. 2020): dy/ds = round(x/s) - x/s inside the range, (qmin - z) below, (qmax - z)
  above, reduced to the scale's shape (LSQ's 1/sqrt(N * qmax) gradient scaling is applied by the
  module, see ``quantizer.py``); when ``zero_point`` requires grad (LSQ+): dy/dz = 0 inside, -s outside.

ONNX export: ``qfair.export.translation.translation_table()`` is the ``custom_translation_table`` for
``torch.onnx.export(..., dynamo=True)``: the op becomes ``QuantizeLinear -> DequantizeLinear`` (int8 for
signed ranges, uint8 for unsigned) with the same scale, zero point and ``axis`` when per-channel; for
sub-8-bit ranges a clip to ``[(qmin - z) * s, (qmax - z) * s]`` precedes the QuantizeLinear so the int8
Q/DQ computes exactly the 6-bit grid (FACTS.md section 8). Call ``qfair.quant.freeze_for_export`` (or
the exporter's ``freeze_copy``) first, so dynamic weight ranges become constants.
"""
from __future__ import annotations

import torch
from torch import Tensor

_LIB = "qfair"


def _shape(x: Tensor, t: Tensor, axis: int) -> Tensor:
    """Broadcast ``t`` (0-d or (C,)) against ``x`` along ``axis``."""
    if axis < 0 or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op(f"{_LIB}::fake_quant", mutates_args=())
def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor:
    """See the module docstring. Device-generic (CPU and CUDA run the same torch ops)."""
    s = _shape(x, scale.to(x.dtype), axis)
    z = _shape(x, zero_point.to(x.dtype), axis)
    t = x / s  # fresh tensor: the remaining steps run in place (same values, fewer allocations)
    return t.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)


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


def _backward(ctx, grad: Tensor):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, axis = ctx.qmin, ctx.qmax, ctx.axis
    s = _shape(x, scale.to(x.dtype), axis)
    z = _shape(x, zero_point.to(x.dtype), axis)
    gx = gs = gz = None
    if ctx.needs_input_grad[0]:
        # clipping mask as bounds on x: round(x/s) + z in [qmin, qmax] <=> x in [(qmin-z-1/2)s, (qmax-z+1/2)s]
        # (up to exact ties), two comparisons instead of re-quantizing x
        lo, hi = (qmin - z - 0.5) * s, (qmax - z + 0.5) * s
        gx = grad * ((x >= lo) & (x <= hi))
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        return gx, None, None, None, None, None
    xs = x / s
    q = torch.round(xs) + z
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    if ctx.needs_input_grad[1]:
        ds = torch.where(inside, torch.round(xs) - xs, torch.where(below, qmin - z, qmax - z))
        gs = _reduce_to(grad * ds, scale, axis).to(scale.dtype)
    if ctx.needs_input_grad[2]:
        dz = torch.where(inside, torch.zeros_like(xs), -s.expand_as(xs))
        gz = _reduce_to(grad * dz, zero_point, axis).to(zero_point.dtype)
    return gx, gs, gz, None, None, None


fake_quant.register_autograd(_backward, setup_context=_setup_context)


def grad_scale(t: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` (LSQ's gradient scaling)."""
    scaled = t * factor
    return (t - scaled).detach() + scaled
