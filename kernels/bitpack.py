"""Bit packing in Triton: unsigned ``bits``-bit codes <-> a little-endian bit stream (eight codes per
``bits`` bytes; at 6 bits, four codes in three bytes). Reference: :mod:`kernels.reference`.

Each program handles BLOCK groups of eight codes as a (BLOCK, 8) tile: the codes are shifted into one
int64 word per group, which is then cut into bytes (and back for unpacking).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

GROUPS_PER_PROGRAM = 256


@triton.jit
def _pack_kernel(codes_ptr, out_ptr, G, BITS: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, 8).to(tl.int64)
    mask = g < G
    v = tl.load(codes_ptr + g[:, None] * 8 + k[None, :], mask=mask[:, None], other=0).to(tl.int64)
    word = tl.sum(v << (k * BITS)[None, :], axis=1)  # (BLOCK,) int64
    byte = (word[:, None] >> (k * 8)[None, :]) & 255  # (BLOCK, 8), first BITS are real
    tl.store(out_ptr + g[:, None] * BITS + k[None, :], byte.to(tl.uint8),
             mask=mask[:, None] & (k < BITS)[None, :])


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, G, BITS: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, 8).to(tl.int64)
    mask = g < G
    b = tl.load(packed_ptr + g[:, None] * BITS + k[None, :], mask=mask[:, None] & (k < BITS)[None, :],
                other=0).to(tl.int64)
    word = tl.sum(b << (k * 8)[None, :], axis=1)
    v = (word[:, None] >> (k * BITS)[None, :]) & ((1 << BITS) - 1)
    tl.store(out_ptr + g[:, None] * 8 + k[None, :], v.to(tl.uint8), mask=mask[:, None])


def pack_bits_triton(codes: Tensor, bits: int) -> Tensor:
    """Triton twin of :func:`kernels.reference.pack_bits_ref`."""
    codes = codes.reshape(-1).to(torch.uint8)
    pad = (-codes.numel()) % 8
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    groups = codes.numel() // 8
    out = torch.empty(groups * bits, dtype=torch.uint8, device=codes.device)
    if groups:
        _pack_kernel[(triton.cdiv(groups, GROUPS_PER_PROGRAM),)](codes, out, groups, BITS=bits,
                                                                 BLOCK=GROUPS_PER_PROGRAM)
    return out


def unpack_bits_triton(packed: Tensor, bits: int, n: int) -> Tensor:
    """Triton twin of :func:`kernels.reference.unpack_bits_ref`."""
    packed = packed.reshape(-1).contiguous()
    groups = packed.numel() // bits
    out = torch.empty(groups * 8, dtype=torch.uint8, device=packed.device)
    if groups:
        _unpack_kernel[(triton.cdiv(groups, GROUPS_PER_PROGRAM),)](packed, out, groups, BITS=bits,
                                                                   BLOCK=GROUPS_PER_PROGRAM)
    return out[:n]
