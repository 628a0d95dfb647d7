"""Low-level kernels (Triton for CUDA) with a plain PyTorch reference beside each.

Call the dispatching functions (they pick Triton on CUDA tensors when triton imports, the reference
otherwise); importing this package does not import triton.
"""
from .dispatch import (fake_quant_backward, fake_quant_forward, fake_quant_lsq, kernel_backend, pack_bits,
                       unpack_bits)

__all__ = ["fake_quant_forward", "fake_quant_backward", "fake_quant_lsq", "pack_bits", "unpack_bits",
           "kernel_backend"]
