"""Triton kernels run under the Triton interpreter on CPU tensors in these tests.

TRITON_INTERPRET must be set before a kernel is decorated, so it is set here at import time, and the
kernel modules are reloaded in case someone imported them earlier without it.
"""
import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def triton_kernels():
    """The Triton kernel modules, compiled for the interpreter (skips when triton is missing)."""
    pytest.importorskip("triton", reason="triton is not installed")
    import kernels.bitpack as bitpack
    import kernels.fake_quant as fake_quant

    fake_quant = importlib.reload(fake_quant)
    bitpack = importlib.reload(bitpack)
    assert type(fake_quant._fq_fwd_kernel).__name__ == "InterpretedFunction"
    return fake_quant, bitpack
