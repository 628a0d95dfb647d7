"""Bit packing: hand-computed bytes, a numpy bit-stream second implementation, Triton == reference."""
import numpy as np
import pytest
import torch

from kernels.reference import pack_bits_ref, unpack_bits_ref


def _numpy_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent implementation: little-endian bits of each code, concatenated, cut into bytes."""
    bitarr = np.unpackbits(codes.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
    bitarr = np.concatenate([bitarr, np.zeros((-len(bitarr)) % (8 * bits), np.uint8)])
    return np.packbits(bitarr, bitorder="little")


def test_six_bit_hand_vector():
    # w = 1 | 2<<6 | 3<<12 | 4<<18 = 0x103081 -> bytes 0x81 0x30 0x10: four codes in three bytes
    packed = pack_bits_ref(torch.tensor([1, 2, 3, 4, 0, 0, 0, 0]), 6)
    assert packed.tolist() == [0x81, 0x30, 0x10, 0, 0, 0]


@pytest.mark.parametrize("bits", range(1, 9))
def test_reference_vs_numpy_and_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, size=101).astype(np.uint8)
    packed = pack_bits_ref(torch.from_numpy(codes), bits)
    assert packed.numel() == 13 * bits
    assert np.array_equal(packed.numpy(), _numpy_pack(codes, bits))
    assert np.array_equal(unpack_bits_ref(packed, bits, len(codes)).numpy(), codes)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_triton_equals_reference(triton_kernels, bits):
    _, bp = triton_kernels
    codes = torch.randint(0, 2 ** bits, (2051,), dtype=torch.uint8)
    packed = bp.pack_bits_triton(codes, bits)
    assert torch.equal(packed, pack_bits_ref(codes, bits))
    assert torch.equal(bp.unpack_bits_triton(packed, bits, codes.numel()), codes)
