import struct

import numpy as np
import pytest

from qfair.data import RecordIO, write_recordio
from qfair.data.preprocess import encode_png
from qfair.data.recordio import MAGIC, encode_record, pack, read_record_at, unpack
from qfair.utils.errors import DataError


def _imgs(n):
    return [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(n)]


def test_roundtrip_insightface_layout(tmp_path):
    imgs = _imgs(5)
    write_recordio(tmp_path / "train.rec", [(encode_png(im), i % 3) for i, im in enumerate(imgs)])
    ds = RecordIO(tmp_path)  # folder with train.rec
    assert len(ds) == 5 and ds.header_labels[0] == 6
    for i in range(5):
        img, label = ds[i]
        assert np.array_equal(img, imgs[i]) and label == i % 3
    assert ds.labels().tolist() == [0, 1, 2, 0, 1]


def test_hand_built_record_bytes():
    # one record: magic, lrec=len, payload, zero padding to 4 bytes (README references [4])
    payload = pack(7.0, b"abcde")
    rec = encode_record(payload)
    assert rec[:4] == struct.pack("<I", MAGIC) and struct.unpack("<I", rec[4:8])[0] == len(payload)
    assert len(rec) == 8 + ((len(payload) + 3) // 4) * 4 and rec[8 + len(payload):] == b"\0" * (len(rec) - 8 - len(payload))
    labels, _, _, body = unpack(payload)
    assert labels.tolist() == [7.0] and body == b"abcde"
    labels, _, _, body = unpack(pack([1.0, 2.0], b"xy"))
    assert labels.tolist() == [1.0, 2.0] and body == b"xy"


def test_multipart_record_with_magic_inside(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"\x00" * 4 + magic + b"1234" + magic + b"tail!"  # magic at aligned positions 4 and 12
    rec = encode_record(payload)
    flags = []
    pos = 0
    while pos < len(rec):
        m, lrec = struct.unpack("<II", rec[pos:pos + 8])
        assert m == MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)
    assert flags == [1, 2, 3]
    p = tmp_path / "x.rec"
    p.write_bytes(rec)
    with open(p, "rb") as f:
        assert read_record_at(f, 0, len(rec), "x") == payload


def test_without_idx_scans(tmp_path):
    imgs = _imgs(3)
    rec, idx = write_recordio(tmp_path / "a.rec", [(im, 5) for im in imgs], fmt="png")
    idx.unlink()
    ds = RecordIO(rec)
    assert len(ds) == 3 and np.array_equal(ds[2][0], imgs[2]) and ds[2][1] == 5


def test_truncated_rec_and_bad_idx(tmp_path):
    rec, idx = write_recordio(tmp_path / "t.rec", [(im, 0) for im in _imgs(3)], fmt="png")
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) - 500])
    # the .idx now points past the end, or the last record is cut: a clear error either way
    with pytest.raises(DataError, match="truncated|past the end"):
        ds = RecordIO(rec)
        for i in range(len(ds)):
            ds[i]
    rec.write_bytes(data)
    idx.write_text(idx.read_text() + f"9\t{len(data) + 100}\n")
    with pytest.raises(DataError, match=r"t.idx:5: offset .* past the end"):
        RecordIO(rec)
    idx.write_text("0\tzero\n")
    with pytest.raises(DataError, match=r"t.idx:1"):
        RecordIO(rec)


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="not found"):
        RecordIO(tmp_path)
    (tmp_path / "e.rec").write_bytes(b"")
    with pytest.raises(DataError):
        RecordIO(tmp_path / "e.rec")


def test_duplicate_idx_key_is_refused(tmp_path):
    imgs = _imgs(3)
    rec, idx = write_recordio(tmp_path / "d.rec", [(im, i) for i, im in enumerate(imgs)], fmt="png")
    lines = idx.read_text().splitlines()
    key2, off3 = lines[2].split("\t")[0], lines[3].split("\t")[1]
    lines[3] = f"{key2}\t{off3}"  # key 2 twice (without a header record one image silently vanished)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"d.idx: key {key2} is listed twice \(entries 3 and 4.*delete it"):
        RecordIO(rec)
    idx.unlink()  # the advice in the message works: the scanned index finds every image
    ds = RecordIO(rec)
    assert len(ds) == 3 and np.array_equal(ds[2][0], imgs[2])
