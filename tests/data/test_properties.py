"""Property-based tests: arbitrary or mutated bytes given to the .bin, RecordIO and pairs readers give a
DataError or a valid result -- never another exception, and never a hang (deadline)."""
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfair.data import RecordIO, read_bin, read_pairs_csv, write_bin, write_recordio
from qfair.data.binfile import restricted_loads
from qfair.data.preprocess import encode_png
from qfair.utils.errors import DataError

SETTINGS = settings(max_examples=int(__import__("os").environ.get("QFAIR_HYPOTHESIS_EXAMPLES", "40")), deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
_IMG = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = val
        elif kind == 1:
            del b[i:i + 1 + val % 16]
        else:
            b[i:i] = bytes([val]) * (1 + val % 8)
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=6)


def _valid_bin() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = write_bin(Path(d) / "v.bin", [encode_png(_IMG[:16, :16])] * 4, [True, False])
        return p.read_bytes()


def _valid_rec() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as d:
        rec, idx = write_recordio(Path(d) / "v.rec", [(encode_png(_IMG[:16, :16]), 1), (encode_png(_IMG[:8, :8]), 2)])
        return rec.read_bytes(), idx.read_bytes()


VALID_BIN = _valid_bin()
VALID_REC, VALID_IDX = _valid_rec()


def _read_bin_bytes(tmp: Path, data: bytes) -> None:
    p = tmp / "x.bin"
    p.write_bytes(data)
    try:
        vs = read_bin(p)
    except DataError:
        return
    assert len(vs.pairs) == len(vs.issame) and vs.images[0].shape == (3, 112, 112)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_bin_arbitrary_bytes(tmp_path, data):
    _read_bin_bytes(tmp_path, data)


@SETTINGS
@given(edits=EDITS)
def test_bin_mutated(tmp_path, edits):
    _read_bin_bytes(tmp_path, _mutate(VALID_BIN, edits))


@SETTINGS
@given(obj=st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=20) | st.text(max_size=10),
                        lambda c: st.lists(c, max_size=4) | st.tuples(c, c), max_leaves=20),
       protocol=st.integers(2, 5))
def test_bin_plain_pickles(obj, protocol):
    try:
        restricted_loads(pickle.dumps(obj, protocol=protocol))
    except DataError:
        pass


def _read_rec(tmp: Path, rec: bytes, idx: bytes | None) -> None:
    (tmp / "x.rec").write_bytes(rec)
    if idx is None:
        (tmp / "x.idx").unlink(missing_ok=True)
    else:
        (tmp / "x.idx").write_bytes(idx)
    try:
        ds = RecordIO(tmp / "x.rec")
        for i in range(min(len(ds), 5)):
            img, label = ds[i]
            assert img.shape == (112, 112, 3) and isinstance(label, int)
    except DataError:
        pass


@SETTINGS
@given(data=st.binary(max_size=2000), with_idx=st.booleans())
def test_recordio_arbitrary_bytes(tmp_path, data, with_idx):
    _read_rec(tmp_path, data, VALID_IDX if with_idx else None)


@SETTINGS
@given(edits=EDITS, which=st.sampled_from(["rec", "idx", "rec-noidx"]))
def test_recordio_mutated(tmp_path, edits, which):
    if which == "idx":
        _read_rec(tmp_path, VALID_REC, _mutate(VALID_IDX, edits))
    else:
        _read_rec(tmp_path, _mutate(VALID_REC, edits), VALID_IDX if which == "rec" else None)


@SETTINGS
@given(text=st.text(max_size=300), raw=st.binary(max_size=200), use_raw=st.booleans())
def test_pairs_csv_arbitrary(tmp_path, text, raw, use_raw):
    (tmp_path / "a.png").write_bytes(encode_png(_IMG))
    p = tmp_path / "p.csv"
    if use_raw:
        p.write_bytes(raw)
    else:
        p.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else p.write_bytes(b"")
    try:
        vs = read_pairs_csv(p)
    except DataError:
        return
    assert len(vs) >= 1


@SETTINGS
@given(edits=EDITS)
def test_pairs_csv_mutated(tmp_path, edits):
    (tmp_path / "a.png").write_bytes(encode_png(_IMG))
    (tmp_path / "b.png").write_bytes(encode_png(_IMG[::-1]))
    valid = b"path1,path2,same,group\na.png,b.png,1,A\nb.png,a.png,0,B\n"
    (tmp_path / "p.csv").write_bytes(_mutate(valid, edits))
    try:
        read_pairs_csv(tmp_path / "p.csv")
    except DataError:
        pass


def test_valid_fixtures_read():
    with tempfile.TemporaryDirectory() as d:
        Path(d, "v.bin").write_bytes(VALID_BIN)
        assert len(read_bin(Path(d, "v.bin"))) == 2
    with pytest.raises(DataError):
        restricted_loads(b"\x80\x04junk")
