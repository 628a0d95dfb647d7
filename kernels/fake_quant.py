"""Fused per-channel fake quantization in Triton: forward, and backward with STE clip mask + LSQ(+)
scale / zero-point gradients. Formulas and the PyTorch reference: :mod:`kernels.reference`.

Layout: ``x`` is seen as (O, C, I) around the channel axis; the grid is (blocks over O*I, C), so one
program reads one channel's scale and zero point once. The backward writes per-(block, channel)
partial sums that torch adds up afterwards (deterministic, no atomics).

Import this module only where triton is importable (``kernels.dispatch`` does the checking).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import channel_view, flat_params

BLOCK = 1024


@triton.jit
def _rint(v):
    """Round half to even (torch.round), written out so it runs on GPU and in the interpreter alike.

    From floor(v) and the fraction v - floor(v), which is exact (Sterbenz; for v in (-1/2, 0) it may round, but
    only towards 1/2, where r = -1 still rounds up to 0). Not floor(v + 1/2): from 2**23 on, v + 1/2 rounds to
    even, so every odd integer came out one too high."""
    r = tl.floor(v)
    d = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)


@triton.jit
def _offsets(C, I, M, BLOCK: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c = tl.program_id(1).to(tl.int64)
    o = j // I
    off = o * C * I + c * I + (j - o * I)  # element (o, c, i) of the (O, C, I) view
    return off, j < M, c


@triton.jit
def _fq_fwd_kernel(x_ptr, y_ptr, s_ptr, zp_ptr, C, I, M, qmin, qmax, BLOCK: tl.constexpr):
    off, mask, c = _offsets(C, I, M, BLOCK)
    s = tl.load(s_ptr + c)
    zp = tl.load(zp_ptr + c)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    q = tl.minimum(tl.maximum(_rint(tl.math.div_rn(x, s)) + zp, qmin), qmax)
    tl.store(y_ptr + off, ((q - zp) * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fq_bwd_kernel(g_ptr, x_ptr, s_ptr, zp_ptr, gx_ptr, gs_ptr, gzp_ptr, C, I, M, NB, qmin, qmax,
                   BLOCK: tl.constexpr):
    off, mask, c = _offsets(C, I, M, BLOCK)
    s = tl.load(s_ptr + c)
    zp = tl.load(zp_ptr + c)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
    v = tl.math.div_rn(x, s)
    r = _rint(v)
    below = r + zp < qmin
    above = r + zp > qmax
    inside = (~below) & (~above)
    tl.store(gx_ptr + off, tl.where(inside, g, 0.0).to(gx_ptr.dtype.element_ty), mask=mask)
    ds = tl.where(inside, r - v, tl.where(below, qmin - zp, qmax - zp))
    dzp = tl.where(inside, 0.0, -s)
    part = c * NB + tl.program_id(0)
    tl.store(gs_ptr + part, tl.sum(tl.where(mask, g * ds, 0.0), axis=0))
    tl.store(gzp_ptr + part, tl.sum(tl.where(mask, g * dzp, 0.0), axis=0))


def _prep(x: Tensor, scale: Tensor, zero_point: Tensor | float, axis: int | None):
    o, c, i = channel_view(x, axis)
    s, zp = flat_params(x, scale, zero_point, axis)  # (C,) each, the count checked
    return x.contiguous(), s.contiguous(), zp.contiguous(), c, i, o * i


def fake_quant_forward_triton(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int,
                              axis: int | None = 0) -> Tensor:
    """Triton twin of :func:`kernels.reference.fake_quant_forward_ref`."""
    x, s, zp, c, i, m = _prep(x, scale, zero_point, axis)
    y = torch.empty_like(x)
    if x.numel():
        _fq_fwd_kernel[(triton.cdiv(m, BLOCK), c)](x, y, s, zp, c, i, m, float(qmin), float(qmax), BLOCK=BLOCK)
    return y


def fake_quant_backward_triton(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int,
                               qmax: int, axis: int | None = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Triton twin of :func:`kernels.reference.fake_quant_backward_ref`."""
    x, s, zp, c, i, m = _prep(x, scale, zero_point, axis)
    grad = grad.contiguous()
    nb = max(triton.cdiv(m, BLOCK), 1)
    gx = torch.empty_like(grad)
    gs = torch.zeros(c, nb, dtype=torch.float32, device=x.device)
    gzp = torch.zeros(c, nb, dtype=torch.float32, device=x.device)
    if x.numel():
        _fq_bwd_kernel[(nb, c)](grad, x, s, zp, gx, gs, gzp, c, i, m, nb, float(qmin), float(qmax), BLOCK=BLOCK)
    return gx, gs.sum(dim=1), gzp.sum(dim=1)
