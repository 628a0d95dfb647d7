"""Second kernel review: exact round-half-to-even in the Triton kernels, and bit packing that refuses what it
cannot pack or unpack (instead of corrupting neighbouring codes, silently)."""
import pytest
import torch

from kernels import dispatch
from kernels.reference import fake_quant_backward_ref, fake_quant_forward_ref, pack_bits_ref, unpack_bits_ref

WIDE = (-2**30, 2**30)  # no saturation: every code the rounding gives shows in the output


def _around_halves_and_large():
    base = torch.tensor([0.5, 1.5, 2.5, 3.5, 4194304.5, 4194305.5, 8388607.5, 8388608.0, 8388609.0, 8388611.0,
                         16777215.0, 1e9])
    nxt = torch.nextafter(base, torch.full_like(base, float("inf")))
    prv = torch.nextafter(base, torch.zeros_like(base))
    v = torch.cat([base, nxt, prv, torch.tensor([0.49999997, 1e-30, 0.0])])
    return torch.cat([v, -v])


def test_triton_rounds_half_to_even_for_every_magnitude(triton_kernels):
    # floor(v + 1/2) made every odd integer from 2**23 on one too large (8388609 -> 8388610); torch.round
    # (the reference) keeps it. Per-tensor, scale 1, so x / s is exactly v.
    fq, _ = triton_kernels
    v = _around_halves_and_large()
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    want = fake_quant_forward_ref(v, one, zero, *WIDE, axis=None)
    assert torch.equal(want, torch.round(v))  # the reference is torch.round here (hand check of the premise)
    assert torch.equal(fq.fake_quant_forward_triton(v, one, zero, *WIDE, axis=None), want)
    g = torch.ones_like(v)
    got = fq.fake_quant_backward_triton(g, v, one, zero, *WIDE, axis=None)
    ref = fake_quant_backward_ref(g, v, one, zero, *WIDE, axis=None)
    assert torch.equal(got[0], ref[0])
    # dy/ds = round(v) - v summed: exact per element here, so the sums agree to float32 rounding
    assert torch.allclose(got[1], ref[1], rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("codes,bits,match", [
    (torch.tensor([0, 1, -1, 2]), 6, "0..63, got -1..2"),          # signed codes: qmin not subtracted
    (torch.tensor([0, 64, 3], dtype=torch.uint8), 6, "0..63, got 0..64"),
    (torch.tensor([300, 1]), 8, "0..255"),
    (torch.tensor([0.0, 1.7]), 6, "integer codes"),
    (torch.tensor([1, 2]), 9, "1..8"),
])
def test_pack_refuses_codes_it_cannot_hold(triton_kernels, monkeypatch, backend, codes, bits, match):
    monkeypatch.setenv("QFAIR_KERNELS", backend)
    with pytest.raises(ValueError, match=match):
        dispatch.pack_bits(codes, bits)


def test_a_negative_code_used_to_corrupt_its_neighbours():
    # the premise of the check above, with the reference: -1 at 6 bits would set every higher bit of the group
    with pytest.raises(ValueError):
        pack_bits_ref(torch.tensor([5, -1, 7, 9, 0, 0, 0, 0]), 6)
    ok = torch.tensor([5, 63, 7, 9], dtype=torch.uint8)  # 63: the largest 6-bit code packs and round-trips
    assert torch.equal(unpack_bits_ref(pack_bits_ref(ok, 6), 6, 4), ok)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_unpack_refuses_a_bad_stream(triton_kernels, monkeypatch, backend):
    monkeypatch.setenv("QFAIR_KERNELS", backend)
    codes = torch.arange(20, dtype=torch.uint8)
    packed = pack_bits_ref(codes, 6)  # 3 groups of 8 codes: 18 bytes
    assert torch.equal(dispatch.unpack_bits(packed, 6, 20), codes)
    with pytest.raises(ValueError, match="at most 24"):
        dispatch.unpack_bits(packed, 6, 25)  # more codes than the stream holds: was a shorter result
    with pytest.raises(ValueError, match="whole groups of 6 bytes"):
        dispatch.unpack_bits(packed[:-1], 6, 16)
    with pytest.raises(ValueError, match="uint8"):
        dispatch.unpack_bits(packed.to(torch.int8), 6, 20)  # int8 bytes would sign-extend into other codes


def test_kernel_mode_errors_say_what_to_do(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("QFAIR_KERNELS", "trtion")  # a typo used to fall back to auto, silently
    with pytest.raises(ValueError, match="not one of auto, reference, triton"):
        dispatch.kernel_backend(torch.zeros(1))
    monkeypatch.setenv("QFAIR_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton forced on a CPU tensor without the interpreter
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.kernel_backend(torch.zeros(1))
    monkeypatch.setenv("QFAIR_KERNELS", " Reference ")
    assert dispatch.kernel_backend(torch.zeros(1)) == "reference"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fake_quant_parameter_count_and_axis_errors(triton_kernels, monkeypatch, backend):
    monkeypatch.setenv("QFAIR_KERNELS", backend)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="scale has 5 .* for 3 channels"):  # Triton: a bare expand error before
        dispatch.fake_quant_forward(x, torch.full((5,), 0.1), torch.zeros(5), -8, 7, 0)
    with pytest.raises(ValueError, match="axis 2 does not exist"):  # was an IndexError
        dispatch.fake_quant_forward(x, torch.full((3,), 0.1), torch.zeros(3), -8, 7, 2)
    y = dispatch.fake_quant_forward(x, torch.tensor([0.1]), torch.zeros(1), -8, 7, 0)  # one value for all
    assert torch.equal(y, fake_quant_forward_ref(x, torch.full((3,), 0.1), torch.zeros(3), -8, 7, 0))
