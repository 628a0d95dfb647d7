"""Review round 4 of the data readers: each test builds the crafted input that used to be read wrongly
(silently dropped records, labels or lines, a raw traceback, a loader altered by a file) in tmp_path."""
import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from qfair.data import binfile, preprocess, recordio
from qfair.data.binfile import read_bin, restricted_loads, write_bin
from qfair.data.folders import FlatFolder, ImageFolder, open_image_source
from qfair.data.pairs_csv import read_pairs_csv
from qfair.data.preprocess import encode_png
from qfair.data.recordio import MAGIC, RecordIO, encode_record, pack, write_recordio
from qfair.data.rfw import read_rfw
from qfair.data.verification import open_benchmark
from qfair.utils.errors import DataError, UnsafeFileError

from .test_rfw import make_rfw


def _face(seed, size=112):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_rec(folder, records):
    """``records``: (key, payload) in file order -> train.rec + train.idx in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    blob, lines = b"", []
    for key, payload in records:
        lines.append(f"{key}\t{len(blob)}")
        blob += encode_record(payload)
    (folder / "train.rec").write_bytes(blob)
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    return folder / "train.rec"


# --- 1. RecordIO header record ---------------------------------------------------------------------
def test_pack_label_rec_with_keys_from_0_keeps_every_image(tmp_path):
    # im2rec --pack-label: label arrays [identity, extra] on every record, keys from 0, no header record.
    # Record 0 used to be taken for the header (>= 2 labels): 10 images -> a dataset of 2.
    ids = [3, 0, 1, 1, 2, 2, 3, 0, 4, 4]
    imgs = [_face(k, 32) for k in range(len(ids))]
    rec = _write_rec(tmp_path, [(k, pack([float(i), 1.0], encode_png(imgs[k]), id1=k)) for k, i in enumerate(ids)])
    ds = RecordIO(rec)
    assert len(ds) == 10 and ds.header_labels is None and ds.keys.tolist() == list(range(10))
    assert ds.labels().tolist() == ids
    img, label = ds[0]
    assert label == 3 and img.shape == (112, 112, 3)


def test_insightface_identity_records_after_the_images_are_expected(tmp_path):
    # MS1MV2 layout: header [n_images + 1, end], images 1..n, one record per identity n+1 .. end-1
    recs = [(0, pack([4.0, 6.0], b""))]
    recs += [(k, pack(float(k % 2), encode_png(_face(k, 16)), id1=k)) for k in range(1, 4)]
    recs += [(4, pack([1.0, 3.0], b"")), (5, pack([3.0, 4.0], b""))]
    rec = _write_rec(tmp_path, recs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = RecordIO(rec)
    assert len(ds) == 3 and ds.keys.tolist() == [1, 2, 3] and ds.header_labels.tolist() == [4.0, 6.0]


def test_keys_beyond_the_header_range_warn(tmp_path):
    recs = [(0, pack([3.0, 3.0], b""))] + [(k, pack(0.0, encode_png(_face(k, 16)))) for k in range(1, 6)]
    rec = _write_rec(tmp_path, recs)
    with pytest.warns(UserWarning, match=r"train\.rec: the index holds 3 record\(s\) with keys outside the range its "
                                         r"header record announces \(images 1\.\.2\), first key 3"):
        ds = RecordIO(rec)
    assert len(ds) == 2


def test_empty_record_0_that_is_no_header_is_an_error(tmp_path):
    rec = _write_rec(tmp_path, [(0, pack(5.0, b""))] + [(k, pack(0.0, encode_png(_face(k, 16)))) for k in (1, 2)])
    with pytest.raises(DataError, match=r"train\.rec key 0: record 0 holds no image, but it is not an insightface "
                                        r"header record.*remove key 0 from the \.idx"):
        RecordIO(rec)


# --- 2. pairs CSV delimiter ------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["# my pairs, tab separated\n", "\n", "  \n# c\n"])
def test_tsv_with_a_comment_or_blank_first_line(tmp_path, first):
    (tmp_path / "my dir").mkdir()
    for i, name in enumerate(("my dir/a b.png", "x.png")):
        Image.fromarray(_face(i)).save(tmp_path / name)
    p = tmp_path / "pairs.txt"
    p.write_text(first + "my dir/a b.png\tx.png\t1\tA, B\nx.png\tmy dir/a b.png\t0\tA, B\n")
    vs = read_pairs_csv(p, validate=False)
    assert len(vs) == 2 and vs.issame.tolist() == [True, False] and vs.groups.tolist() == ["A, B", "A, B"]
    assert vs.images.names[vs.pairs[0, 0]].endswith("my dir/a b.png")


def test_csv_with_a_comment_holding_a_tab_stays_comma_separated(tmp_path):
    for i in range(2):
        Image.fromarray(_face(i)).save(tmp_path / f"{i}.png")
    p = tmp_path / "pairs.csv"
    p.write_text("#\tnotes\n0.png,1.png,1\n")
    assert len(read_pairs_csv(p, validate=False)) == 1


# --- 3. loose images beside identity folders -------------------------------------------------------
def test_open_image_source_refuses_to_drop_labels(tmp_path):
    for ident in ("alice", "bob"):
        (tmp_path / ident).mkdir()
        for k in range(2):
            Image.fromarray(_face(k)).save(tmp_path / ident / f"{k}.png")
    for name in ("stray1.png", "stray2.jpg", "stray3.png", "stray4.png"):
        Image.fromarray(_face(9)).save(tmp_path / name)
    with pytest.raises(DataError, match=r"4 loose images \(stray1\.png, stray2\.jpg, stray3\.png and 1 more\) beside "
                                        r"the <identity>/ sub-folders.*Move them into an <identity>/ sub-folder.*"
                                        r"synthetic:.*labelled=False"):
        open_image_source(tmp_path)
    flat = open_image_source(tmp_path, labelled=False)
    assert isinstance(flat, FlatFolder) and len(flat) == 8
    for name in ("stray1.png", "stray2.jpg", "stray3.png", "stray4.png"):
        (tmp_path / name).unlink()
    ds = open_image_source(tmp_path)
    assert isinstance(ds, ImageFolder) and ds.targets.tolist() == [0, 0, 1, 1]


def test_loose_images_with_image_free_sub_folders_still_read_flat(tmp_path):
    for k in range(3):
        Image.fromarray(_face(k)).save(tmp_path / f"{k}.png")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    ds = open_image_source(tmp_path)
    assert isinstance(ds, FlatFolder) and len(ds) == 3


# --- 4. open_benchmark and colons in paths ---------------------------------------------------------
def _bin(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bin(path, [_face(seed + k) for k in range(4)], [True, False])


def test_bare_path_with_a_colon_is_not_split(tmp_path):
    p = _bin(tmp_path / "run 12:30" / "lfw.bin")
    vs = open_benchmark(str(p), validate=False)
    assert vs.name == "lfw" and len(vs) == 2
    assert open_benchmark(f"bin:{p}", validate=False).name == "lfw"
    assert open_benchmark(f"mylfw:{p}", validate=False).name == "mylfw"


def test_registered_kind_wins_over_a_file_named_like_the_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _bin(tmp_path / "x.bin", seed=0)
    _bin(tmp_path / "bin:x.bin", seed=50)  # a file literally named "bin:x.bin"
    vs = open_benchmark("bin:x.bin", validate=False)  # kind "bin", path x.bin
    assert vs.meta["source"] == "x.bin"
    assert open_benchmark("./bin:x.bin", validate=False).meta["source"] == "bin:x.bin"
    _bin(tmp_path / "bin:y.bin", seed=60)  # only the literal file exists: say how to open it
    with pytest.raises(DataError, match=r"benchmark 'bin:y\.bin'.*y\.bin, which does not exist; a file named "
                                        r"'bin:y\.bin' exists: to open it, write \./bin:y\.bin"):
        open_benchmark("bin:y.bin", validate=False)


# --- 5. huge numbers in .idx -----------------------------------------------------------------------
@pytest.fixture
def small_rec(tmp_path):
    rec, idx = write_recordio(tmp_path / "train.rec", [(b"abc", 0), (b"def", 1)])
    return rec, idx, idx.read_text()


@pytest.mark.parametrize("extra,msg", [
    ("5\t99999999999999999999999\n", r"x\.idx:4: offset 99999999999999999999999 of key 5 is past the end"),
    ("5\t9223372036854775807\n", r"x\.idx:4: offset 9223372036854775807 of key 5 is past the end"),
    ("\n99999999999999999999999\t0\n", r"x\.idx:5: key 99999999999999999999999 is outside 0 \.\. 2\*\*63-1"),
    ("99999999999999999999999\t0\n", r"x\.idx:4: key 99999999999999999999999 is outside"),
    ("-99999999999999999999999\t0\n", r"x\.idx:4: key -99999999999999999999999 is outside"),
    ("-1\t0\n", r"x\.idx:4: key -1 is outside"),
    ("5\t-99999999999999999999999\n", r"x\.idx:4: offset -99999999999999999999999 of key 5 is negative"),
])
def test_huge_idx_values_name_the_line(small_rec, extra, msg):
    rec, idx, base = small_rec
    p = idx.parent / "x.idx"
    p.write_text(base + extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow RuntimeWarning on the way
        with pytest.raises(DataError, match=msg):
            RecordIO(rec, idx_path=p)


def test_idx_key_at_the_int64_limit_is_exact(small_rec):
    rec, idx, base = small_rec
    p = idx.parent / "x.idx"
    p.write_text(base + "9223372036854775807\t40\n")
    keys, offsets = recordio._read_idx(p, rec.stat().st_size)
    assert keys.tolist()[-1] == 2**63 - 1 and offsets.tolist()[-1] == 40
    p.write_text(base + "9223372036854775808\t40\n")  # one more: numpy clamps it to the limit, the line parser not
    with pytest.raises(DataError, match=r"x\.idx:4: key 9223372036854775808 is outside"):
        recordio._read_idx(p, rec.stat().st_size)


# --- 6. the .bin unpickler cannot change qfair's loaders -------------------------------------------
BUILD_ON_FUNCTION = (b"\x80\x02cnumpy\ndtype\nq\x00N}q\x01X\x0c\x00\x00\x00__defaults__q\x02X\x01\x00\x00\x00xq\x03"
                     b"\x85q\x04s\x86q\x05b.")  # numpy.dtype; BUILD (None, {'__defaults__': ('x',)})


def test_build_on_an_allowed_global_is_refused(tmp_path):
    before = binfile._safe_dtype.__defaults__
    with pytest.raises(DataError, match=r"refused to modify 'numpy\.dtype'.*Do not use this file") as err:
        restricted_loads(BUILD_ON_FUNCTION)
    assert isinstance(err.value, UnsafeFileError)
    assert binfile._safe_dtype.__defaults__ is before and binfile._safe_dtype.__defaults__ is None
    # the same through the file reader: the error names the file
    p = tmp_path / "evil.bin"
    p.write_bytes(BUILD_ON_FUNCTION)
    with pytest.raises(UnsafeFileError, match=r"evil\.bin: refused to modify"):
        read_bin(p)
    # a dict state (BUILD updating __dict__) and a plain __setstate__ state are refused too
    for state in (b"}q\x01X\x01\x00\x00\x00aq\x02K\x01s", b"K\x01"):
        data = b"\x80\x02cnumpy\ndtype\nq\x00" + state + b"b."
        with pytest.raises(UnsafeFileError, match="refused to modify"):
            restricted_loads(data)
    assert not hasattr(binfile._safe_dtype, "a")
    # ordinary files still load, with numpy arrays of every protocol
    for protocol in (2, 4, 5):
        good = write_bin(tmp_path / f"ok{protocol}.bin", [_face(k, 16) for k in range(2)], [True], as_arrays=True,
                         protocol=protocol)
        assert len(read_bin(good)) == 1
    arr = restricted_loads(pickle.dumps(np.arange(6, dtype=np.int64).reshape(2, 3), protocol=2))
    assert arr.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_the_stand_ins_are_made_per_load():
    u1 = restricted_loads(pickle.dumps(np.dtype("u1"), protocol=2))
    assert u1 == np.dtype("u1")
    a = binfile._RestrictedUnpickler(io.BytesIO(b"."))
    b = binfile._RestrictedUnpickler(io.BytesIO(b"."))
    fa, fb = a.find_class("numpy", "dtype"), b.find_class("numpy", "dtype")
    assert fa is not fb and fa is not binfile._safe_dtype
    with pytest.raises(UnsafeFileError):
        fa.__defaults__ = ("x",)


# --- 7. RFW trailing tab, write_recordio order, .idx into a continuation part -----------------------
def test_rfw_pairs_line_with_a_trailing_tab_or_space_separated(tmp_path):
    make_rfw(tmp_path, races=("African",))
    p = tmp_path / "test" / "txts" / "African" / "African_pairs.txt"
    lines = p.read_text().splitlines()
    lines[0] = lines[0].replace("\t", " ") + "\t"  # "m.Af0 1 2\t": spaces between fields, a tab at the end
    lines[2] = lines[2] + "\t "
    p.write_text("\n".join(lines) + "\n")
    vs = read_rfw(tmp_path, validate=False)
    assert len(vs) == 4 and vs.issame.tolist() == [True, True, False, False]


def test_write_recordio_never_leaves_a_new_rec_beside_an_old_idx(tmp_path, monkeypatch):
    old = [(encode_png(_face(k, 16)), k) for k in range(3)]
    new = [(encode_png(_face(10 + k, 24)), 7) for k in range(5)]
    rec, idx = write_recordio(tmp_path / "train.rec", old)
    real_replace = os.replace

    def crash_on_idx(src, dst, *a, **k):
        if str(dst).endswith(".idx"):
            raise KeyboardInterrupt("killed between the two renames")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", crash_on_idx)
    with pytest.raises(KeyboardInterrupt):
        write_recordio(rec, new)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not idx.exists()  # the old .idx is gone: its offsets belong to the old .rec
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    ds = RecordIO(rec)  # indexed by scanning the new .rec
    assert len(ds) == 5 and ds.labels().tolist() == [7] * 5 and ds[4][0].shape == (112, 112, 3)
    write_recordio(rec, new)
    assert idx.exists() and len(RecordIO(rec)) == 5


def test_idx_offset_on_a_continuation_part_names_the_key(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = pack(1.0, b"\x00" * 4 + magic + b"1234" + magic + b"tail!")  # a 3-part record
    first = encode_record(pack(0.0, b"abcd"))
    multi = encode_record(payload)
    second_part = len(first) + 8 + ((struct.unpack("<I", multi[4:8])[0] & ((1 << 29) - 1)) + 3 & ~3)
    (tmp_path / "m.rec").write_bytes(first + multi)
    (tmp_path / "m.idx").write_text(f"0\t0\n1\t{second_part}\n")
    ds = RecordIO(tmp_path / "m.rec")
    assert ds.read(0) == (b"abcd", 0)
    with pytest.raises(DataError, match=r"m\.rec key 1: byte \d+ is the middle or last part of a multi-part record "
                                        r"\(continuation flag 2\).*Delete the \.idx"):
        ds.read(1)
    (tmp_path / "m.idx").write_text(f"0\t0\n1\t{len(first)}\n")
    ds = RecordIO(tmp_path / "m.rec")
    assert ds.read(1)[0] == payload[24:]


# --- 8. square images of another size from folders and pairs files --------------------------------
def test_resized_square_images_warn_once_per_folder_or_pairs_file(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "_WARNED_SOURCES", set())
    folder = tmp_path / "faces"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(_face(k, 128)).save(folder / f"{k}.png")
    ds = FlatFolder(folder)
    with pytest.warns(UserWarning, match=r"faces: images are not 112x112 \(e\.g\. .*0\.png is 128x128\); they are "
                                         r"resized to 112x112\. qfair expects aligned face crops") as rec:
        imgs = [ds[i][0] for i in range(3)]
    assert len([w for w in rec if "resized" in str(w.message)]) == 1 and imgs[2].shape == (112, 112, 3)
    csv = tmp_path / "pairs.csv"
    csv.write_text("faces/0.png,faces/1.png,1\nfaces/1.png,faces/2.png,0\n")
    with pytest.warns(UserWarning, match=r"pairs\.csv: images are not 112x112"):
        read_pairs_csv(csv)
    # .bin and .rec files hold other sizes by convention (FACTS: resize to 112 if needed): no warning
    b = write_bin(tmp_path / "lfw.bin", [_face(k, 128) for k in range(4)], [True, False])
    r, _ = write_recordio(tmp_path / "train.rec", [(_face(k, 128), 0) for k in range(2)], fmt="png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_bin(b)
        rds = RecordIO(r)
        rds[1]
        rds.close()
        ds[0]  # this folder was warned about already
        Image.fromarray(_face(5)).save(folder / "5.png")
        FlatFolder(folder)[3]  # 112x112: nothing to say
