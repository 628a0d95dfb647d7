"""Packed low-bit checkpoints: exact round trip, size, safe loading of corrupt files."""
import numpy as np
import pytest
import torch

from qfair.export.packed import WeightSpec, load_packed, save_packed
from qfair.quant.math import fake_quantize_ref, qrange
from qfair.utils.errors import CheckpointError


def _state_and_specs(bits, symmetric=False, channels=32, seed=0, cin=16):
    g = torch.Generator().manual_seed(seed)
    state = {"conv.weight": torch.randn(channels, cin, 3, 3, generator=g),
             "fc.weight": torch.randn(channels, 4 * cin, generator=g),
             "bn.weight": torch.rand(channels, generator=g), "bn.running_var": torch.rand(channels, generator=g),
             "bn.num_batches_tracked": torch.tensor(7)}
    qmin, qmax = qrange(bits, symmetric)
    specs = {}
    for k in ("conv.weight", "fc.weight"):
        w = state[k]
        lo, hi = w.flatten(1).min(1).values.clamp(max=0), w.flatten(1).max(1).values.clamp(min=0)
        if symmetric:
            s, z = torch.maximum(-lo, hi) / qmax, torch.zeros(channels)
        else:
            s = (hi - lo) / (qmax - qmin)
            z = torch.clamp(qmin - torch.round(lo / s), qmin, qmax)
        specs[k] = WeightSpec(bits, s, z, qmin, qmax, 0)
    return state, specs


@pytest.mark.parametrize("bits,symmetric", [(2, False), (4, True), (6, False), (6, True), (8, True)])
def test_exact_round_trip(tmp_path, bits, symmetric):
    state, specs = _state_and_specs(bits, symmetric)
    path = save_packed(state, tmp_path / "m.qpk", specs=specs, meta={"arch": "toy"})
    loaded, meta = load_packed(path)
    assert meta["arch"] == "toy" and list(loaded) == list(state)
    for k, t in state.items():
        want = fake_quantize_ref(t, specs[k].scale, specs[k].zero_point, specs[k].qmin, specs[k].qmax, 0) \
            if k in specs else t
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], want), k


def test_six_bit_file_is_small(tmp_path):
    state, specs = _state_and_specs(6, channels=128, cin=128)  # a conv-net layer's proportions
    torch.save(state, tmp_path / "f32.pt")
    path = save_packed(state, tmp_path / "m.qpk", specs=specs)
    ratio = path.stat().st_size / (tmp_path / "f32.pt").stat().st_size
    assert ratio <= 0.20, ratio


def test_file_holds_no_pickle(tmp_path):
    state, specs = _state_and_specs(6)
    data = save_packed(state, tmp_path / "m.qpk", specs=specs).read_bytes()
    assert data[:8] == b"QFAIRPK1" and b"\x80\x04\x95" not in data[:64]


def test_corrupt_files_are_refused(tmp_path):
    state, specs = _state_and_specs(6)
    data = save_packed(state, tmp_path / "m.qpk", specs=specs).read_bytes()
    (tmp_path / "cut.qpk").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_packed(tmp_path / "cut.qpk")
    (tmp_path / "bad.qpk").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(CheckpointError, match="magic"):
        load_packed(tmp_path / "bad.qpk")
    with pytest.raises(CheckpointError, match="not found"):
        load_packed(tmp_path / "missing.qpk")


@pytest.mark.parametrize("field,value", [("offset", -64), ("count", 9)])
def test_a_packed_entry_outside_its_data_is_refused(tmp_path, field, value):
    """A negative offset would read the header and padding as codes; a count that is not the shape's size
    would fail in reshape: both are corrupt files (CheckpointError), never silently loaded weights."""
    import json
    import struct

    path = save_packed({"w": torch.randn(4, 3)}, tmp_path / "ok.qpk",
                       specs={"w": WeightSpec(4, torch.tensor(0.1), torch.tensor(8), 0, 15, None)})
    data = bytearray(path.read_bytes())
    (hlen,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16:16 + hlen])
    entry = next(e for e in header["tensors"] if e["kind"] == "packed")
    entry[field] = value
    blobs = bytes(data[16 + hlen + (-(16 + hlen)) % 64:])  # offsets count from the 64-aligned data start
    text = json.dumps(header).encode()
    head = data[:8] + struct.pack("<Q", len(text)) + text
    bad = tmp_path / "bad.qpk"
    bad.write_bytes(bytes(head) + b"\0" * ((-len(head)) % 64) + blobs)
    with pytest.raises(CheckpointError, match="packed tensor 'w' is corrupt"):
        load_packed(bad)


def test_codes_fit_the_bit_width():
    """A 6-bit asymmetric weight uses codes 0..63: the packed blob holds 6 bits per value."""
    state, specs = _state_and_specs(6)
    from qfair.export.packed import pack_state_dict

    blob = pack_state_dict(state, specs)
    n = state["conv.weight"].numel() + state["fc.weight"].numel()
    assert len(blob) < n * 6 / 8 + 4096
    assert np.isfinite(len(blob))


def test_quantized_model_round_trip(tmp_path, deploy6, quantface8, parity_images):
    """A prepared model loaded from the packed file computes exactly what the original computes."""
    import copy

    from qfair.export.packed import load_packed_into

    for model in (deploy6, quantface8):
        path = save_packed(model, tmp_path / "m.qpk")
        fresh = copy.deepcopy(model)
        for p in fresh.parameters():
            p.data.zero_()
        load_packed_into(fresh, path)
        with torch.no_grad():
            assert torch.equal(fresh(parity_images[:4]), model(parity_images[:4]))


def test_float16_option_and_dedup(tmp_path):
    state, specs = _state_and_specs(6, channels=64, cin=64)
    state["conv_quantizer.scale"] = specs["conv.weight"].scale.clone()  # stored once, shared
    exact = save_packed(state, tmp_path / "a.qpk", specs=specs).stat().st_size
    half = save_packed(state, tmp_path / "b.qpk", specs=specs, float_dtype="float16").stat().st_size
    assert half < exact
    loaded, _ = load_packed(tmp_path / "b.qpk")
    assert torch.equal(loaded["conv_quantizer.scale"], state["conv_quantizer.scale"])  # scales stay exact
    assert torch.allclose(loaded["bn.weight"], state["bn.weight"], rtol=1e-3)
    assert loaded["bn.weight"].dtype == torch.float32
