"""Pick the Triton kernel where it can run (CUDA tensor + importable triton) and the PyTorch reference
otherwise. This is the module the rest of qfair calls; the kernels and references are equal by test.

``QFAIR_KERNELS=reference`` forces the references; ``QFAIR_KERNELS=triton`` forces Triton even on CPU
tensors (only useful under ``TRITON_INTERPRET=1``, which the tests use).
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from . import reference as ref


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


MODES = ("auto", "reference", "triton")


def _mode() -> str:
    mode = os.environ.get("QFAIR_KERNELS", "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"QFAIR_KERNELS={os.environ['QFAIR_KERNELS']!r} is not one of {', '.join(MODES)}: unset it "
                         "(auto: Triton on CUDA tensors), or set reference or triton")
    return mode


def kernel_backend(t: Tensor) -> str:
    """"triton" or "reference": which implementation runs for tensor ``t``."""
    mode = _mode()
    if mode == "reference" or not triton_importable():
        return "reference"
    if mode == "triton" and not t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # Triton compiles for a GPU: on a CPU tensor it fails deep inside with "0 active drivers"
        raise ValueError("QFAIR_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1 (set before the kernels are "
                         "imported); unset QFAIR_KERNELS to use the PyTorch reference on CPU")
    if mode == "triton" or t.is_cuda:
        return "triton"
    return "reference"


def fake_quant_forward(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int,
                       axis: int | None = 0) -> Tensor:
    """y = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s, per channel along ``axis`` (None: per tensor)."""
    if kernel_backend(x) == "triton":
        from .fake_quant import fake_quant_forward_triton

        return fake_quant_forward_triton(x, scale, zero_point, qmin, qmax, axis)
    return ref.fake_quant_forward_ref(x, scale, zero_point, qmin, qmax, axis)


def fake_quant_backward(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int,
                        axis: int | None = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_scale (C,), grad_zero_point (C,)): STE with clip mask + LSQ(+) gradients."""
    if kernel_backend(x) == "triton":
        from .fake_quant import fake_quant_backward_triton

        return fake_quant_backward_triton(grad, x, scale, zero_point, qmin, qmax, axis)
    return ref.fake_quant_backward_ref(grad, x, scale, zero_point, qmin, qmax, axis)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Unsigned codes (N,) -> uint8 (ceil(N/8)*bits,) little-endian bit stream. Codes outside 0..2**bits - 1 (or
    not integers) raise ValueError on either backend."""
    ref.check_codes(codes, bits)
    if kernel_backend(codes) == "triton":
        from .bitpack import pack_bits_triton

        return pack_bits_triton(codes, bits)
    return ref.pack_bits_ref(codes, bits)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: uint8 codes (n,). A stream that is not uint8, not whole groups of ``bits``
    bytes, or holds fewer than ``n`` codes raises ValueError on either backend."""
    ref.check_packed(packed, bits, n)
    if kernel_backend(packed) == "triton":
        from .bitpack import unpack_bits_triton

        return unpack_bits_triton(packed, bits, n)
    return ref.unpack_bits_ref(packed, bits, n)


class _FakeQuantLSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, grad_factor):
        ctx.save_for_backward(x, scale, zero_point)
        ctx.args = (qmin, qmax, axis, grad_factor)
        return fake_quant_forward(x, scale, zero_point, qmin, qmax, axis)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax, axis, factor = ctx.args
        gx, gs, gzp = fake_quant_backward(grad, x, scale, zero_point, qmin, qmax, axis)
        gs = (gs * factor).reshape(scale.shape).to(scale.dtype) if ctx.needs_input_grad[1] else None
        gzp = (gzp * factor).reshape(zero_point.shape).to(zero_point.dtype) if ctx.needs_input_grad[2] else None
        return gx, gs, gzp, None, None, None, None


def fake_quant_lsq(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = 0,
                   grad_factor: float = 1.0) -> Tensor:
    """Differentiable fake quantization with learnable scale (and zero point) a la LSQ(+).

    ``grad_factor`` multiplies the scale and zero-point gradients (LSQ uses 1 / sqrt(numel * qmax)).
    """
    return _FakeQuantLSQ.apply(x, scale, zero_point, qmin, qmax, axis, grad_factor)
