"""Plain PyTorch references for every kernel in this folder (the kernels are tested against these).

Fake quantization (per channel along ``axis``, or per tensor with ``axis`` None or negative), with
``v = x / s`` (true division, as ONNX QuantizeLinear does; README references [8]) and round half to even:

    q = clamp(round(v) + zp, qmin, qmax)            y = (q - zp) * s

Backward (straight-through estimator with clip mask, plus the LSQ / LSQ+ gradients of scale and zero
point, Esser et al. 2020; Bhalgat et al. 2020):

    inside  (qmin <= round(v) + zp <= qmax):  dy/dx = 1, dy/ds = round(v) - v,  dy/dzp = 0
    below:                                    dy/dx = 0, dy/ds = qmin - zp,     dy/dzp = -s
    above:                                    dy/dx = 0, dy/ds = qmax - zp,     dy/dzp = -s

The gradients of scale and zero point are summed over everything but ``axis``; LSQ's gradient scale
factor (1 / sqrt(numel * qmax)) is left to the caller.

Bit packing: unsigned codes of ``bits`` (1..8) bits are written as one little-endian bit stream, so
eight codes always fill exactly ``bits`` bytes; at 6 bits, four codes fill three bytes:
``w = c0 | c1 << 6 | c2 << 12 | c3 << 18``, bytes ``w & 255, (w >> 8) & 255, w >> 16``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def channel_view(x: Tensor, axis: int | None) -> tuple[int, int, int]:
    """(outer, channels, inner) sizes of ``x`` seen as (O, C, I) around ``axis`` (C = 1 per tensor).

    ``axis`` None or negative means per tensor (the convention of ``qfair.quant.math``).
    """
    if axis is None or axis < 0 or x.dim() == 0:
        return 1, 1, x.numel()
    if axis >= x.dim():
        raise ValueError(f"channel axis {axis} does not exist in a tensor of shape {tuple(x.shape)}: pass an axis "
                         f"below {x.dim()}, or None for one scale over the whole tensor")
    shape = x.shape
    outer = 1
    for d in shape[:axis]:
        outer *= d
    inner = 1
    for d in shape[axis + 1:]:
        inner *= d
    return outer, shape[axis], inner


def flat_params(x: Tensor, scale: Tensor, zero_point: Tensor | float, axis: int | None) -> tuple[Tensor, Tensor]:
    """Scale and zero point as float32 (C,) tensors on ``x``'s device, C = ``x.shape[axis]`` (1 per tensor); one
    value is repeated over the channels. Any other count raises ValueError naming both."""
    _, c, _ = channel_view(x, axis)
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(-1)
    zp = torch.as_tensor(zero_point, dtype=torch.float32, device=x.device).reshape(-1)
    if s.numel() not in (1, c) or zp.numel() not in (1, c):
        raise ValueError(f"scale has {s.numel()} and zero point {zp.numel()} values for {c} channels (axis {axis} of "
                         f"a tensor of shape {tuple(x.shape)}): pass one value, or one per channel")
    return s.expand(c), zp.expand(c)


def _params(x: Tensor, scale: Tensor, zero_point: Tensor | float, axis: int | None) -> tuple[Tensor, Tensor]:
    """Scale and zero point as float32 tensors broadcastable to ``x``."""
    s, zp = flat_params(x, scale, zero_point, axis)
    shape = [1] * x.dim()
    if axis is not None and axis >= 0 and x.dim() > 0:
        shape[axis] = -1
    return s.reshape(shape), zp.reshape(shape)


def fake_quant_forward_ref(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int,
                           axis: int | None = 0) -> Tensor:
    """Fake-quantize ``x`` (any shape) with per-channel (or per-tensor) scale and zero point."""
    s, zp = _params(x, scale, zero_point, axis)
    q = torch.clamp(torch.round(x.float() / s) + zp, qmin, qmax)
    return ((q - zp) * s).to(x.dtype)


def fake_quant_backward_ref(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int,
                            qmax: int, axis: int | None = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x like x, grad_scale (C,), grad_zero_point (C,)) for the formulas in the module docstring."""
    s, zp = _params(x, scale, zero_point, axis)
    v = x.float() / s
    r = torch.round(v)
    below = r + zp < qmin
    above = r + zp > qmax
    inside = ~(below | above)
    g = grad.float()
    ds = torch.where(inside, r - v, torch.where(below, qmin - zp, qmax - zp))
    dzp = torch.where(inside, torch.zeros_like(v), -s.expand_as(v))
    per_tensor = axis is None or axis < 0
    dims = [d for d in range(x.dim()) if per_tensor or d != axis]
    gs = (g * ds).sum(dim=dims) if dims else g * ds
    gzp = (g * dzp).sum(dim=dims) if dims else g * dzp
    # where, not g * inside: a NaN / Inf gradient at a clipped element is dropped (0), as the Triton kernel does
    return torch.where(inside, g, torch.zeros_like(g)).to(grad.dtype), gs.reshape(-1), gzp.reshape(-1)


def check_bits(bits: int) -> None:
    """A packing width: an int in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def check_codes(codes: Tensor, bits: int) -> None:
    """Codes to pack: integers in 0..2**bits - 1. Anything else would spill into its neighbours' bits (a negative
    code sets every higher bit of the group), so the packed stream would decode to other codes, silently."""
    check_bits(bits)
    if codes.is_floating_point() or codes.is_complex():
        raise ValueError(f"pack_bits takes integer codes, got {str(codes.dtype).replace('torch.', '')}: quantize "
                         "first (qfair.quant.math.quantize) and subtract qmin")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(f"pack_bits at {bits} bits takes codes in 0..{2**bits - 1}, got {lo}..{hi}: subtract "
                             f"qmin from signed codes (e.g. -{2**(bits - 1)}..{2**(bits - 1) - 1} -> "
                             f"0..{2**bits - 1}), or pack at a wider bit width")


def check_packed(packed: Tensor, bits: int, n: int) -> None:
    """A packed stream: uint8, whole groups of ``bits`` bytes, holding at least ``n`` codes."""
    check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_bits takes the uint8 bytes pack_bits wrote, got {packed.dtype} (view or convert "
                         "raw bytes with torch.frombuffer(..., dtype=torch.uint8))")
    if packed.numel() % bits:
        raise ValueError(f"a {bits}-bit packed stream holds whole groups of {bits} bytes (8 codes each), got "
                         f"{packed.numel()} bytes: the stream is truncated or was packed at another width")
    have = packed.numel() // bits * 8
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= have:
        raise ValueError(f"cannot unpack {n!r} codes from {packed.numel()} bytes at {bits} bits (they hold at most "
                         f"{have}): pass the code count pack_bits was given")


def pack_bits_ref(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned codes (N,) < 2**bits into ceil(N / 8) * bits bytes (uint8), zero padded."""
    check_codes(codes, bits)
    codes = codes.reshape(-1).to(torch.int64)
    pad = (-codes.numel()) % 8
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    groups = codes.view(-1, 8)  # (G, 8): eight codes -> one 8*bits-bit word -> ``bits`` bytes
    k = torch.arange(8, device=codes.device)
    word = (groups << (k * bits)).sum(dim=1)  # (G,) int64; at 8 bits the top byte wraps into the sign bit, harmless
    out = (word[:, None] >> (k * 8)) & 255  # (G, 8)
    return out[:, :bits].to(torch.uint8).reshape(-1)


def unpack_bits_ref(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits_ref`: the first ``n`` codes as uint8 (N,)."""
    check_packed(packed, bits, n)
    groups = packed.reshape(-1, bits).to(torch.int64)  # (G, bits)
    k = torch.arange(8, device=packed.device)
    word = (groups << (k[:bits] * 8)).sum(dim=1)  # (G,)
    codes = (word[:, None] >> (k * bits)) & ((1 << bits) - 1)  # (G, 8)
    return codes.reshape(-1)[:n].to(torch.uint8)
