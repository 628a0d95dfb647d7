"""Bad user data files: each must fail early with a DataError naming the file (and line / record) and
saying what to do, or be read correctly; never a raw traceback, silently wrong pixels or silently
dropped data."""
import io
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data import calibration_batches, decode_image, read_bin, read_pairs_csv, read_rfw
from qfair.data import preprocess, recordio
from qfair.data.groups import GroupClassifier, GroupFolder
from qfair.data.mixing import MixedSource, mix_calibration, parse_mix
from qfair.utils.errors import DataError

from .test_rfw import make_rfw


def _face(seed, size=112):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _faces(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(_face(i)).save(folder / f"{i}.png")


# --- decoding -------------------------------------------------------------------------------------
def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    # Pillow's convert("RGB") clips 16-bit pixels at 255: a mid-grey 16-bit face came out white
    grey16 = (np.arange(112 * 112, dtype=np.int64).reshape(112, 112) * 5 % 65536).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = decode_image(tmp_path / "g16.png")
    want = np.round(grey16 / 257.0)
    assert out.shape == (112, 112, 3) and np.abs(out[..., 1] - want).max() <= 1
    assert np.array_equal(out[..., 0], out[..., 2])


def test_float_pixels_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((112, 112)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif: floating-point pixels.*8-bit RGB"):
        decode_image(tmp_path / "f.tif")


def test_corrupt_bytes_message_is_clean():
    with pytest.raises(DataError) as err:
        decode_image(b"not an image at all", name="x.rec key 3")
    msg = str(err.value)
    assert msg.startswith("x.rec key 3: corrupt") and "BytesIO" not in msg and "0x" not in msg
    assert "Replace the data file" in msg  # not "remove the file": it is a record inside a data file


def test_non_square_image_warns_once_per_size(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "_WARNED_SIZES", set())
    for i in range(2):
        Image.fromarray(_face(i)[:, :96]).save(tmp_path / f"{i}.png")  # 96 wide, 112 high (SphereFace crop)
    with pytest.warns(UserWarning, match=r"0\.png: image is 96x112, not square; it is stretched"):
        decode_image(tmp_path / "0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_image(tmp_path / "1.png")  # same size: no second warning
        decode_image(_face(3, 200))  # square, only resized: no warning


# --- pairs CSV ------------------------------------------------------------------------------------
def test_csv_header_after_a_comment_with_other_column_names(tmp_path):
    _faces(tmp_path, 4)
    (tmp_path / "p.csv").write_text("# exported by my tool\nimg_a,img_b,label,race\n0.png,1.png,1,A\n2.png,3.png,0,B\n")
    vs = read_pairs_csv(tmp_path / "p.csv")
    assert vs.issame.tolist() == [True, False] and vs.groups.tolist() == ["A", "B"]


def test_csv_header_in_another_order_is_an_error(tmp_path):
    _faces(tmp_path, 2)
    (tmp_path / "p.csv").write_text("same,path1,path2,group\n1,0.png,1.png,A\n")
    with pytest.raises(DataError, match=r"p\.csv:1: header column 1 is 'same'.*Reorder"):
        read_pairs_csv(tmp_path / "p.csv")


def test_csv_first_row_with_missing_image_is_not_taken_as_header(tmp_path):
    _faces(tmp_path, 2)
    (tmp_path / "p.csv").write_text("9.png,1.png,same,A\n0.png,1.png,1,A\n")
    with pytest.raises(DataError, match=r"p\.csv:1: image .*9\.png not found"):
        read_pairs_csv(tmp_path / "p.csv")


@pytest.mark.parametrize("text,msg", [("0.png,1.png,1,A\n2.png,3.png,0,\n", r"p\.csv:2: no group on this line but one "
                                                                         r"on line 1"),
                                      ("0.png,1.png,1\n2.png,3.png,0,B\n", r"p\.csv:2: a group on this line but none")])
def test_csv_group_on_some_lines_only_is_an_error(tmp_path, text, msg):
    # the pairs without a group used to form a silent extra group "all"
    _faces(tmp_path, 4)
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(DataError, match=msg):
        read_pairs_csv(tmp_path / "p.csv")


# --- RFW ------------------------------------------------------------------------------------------
def test_rfw_pairs_file_with_bom(tmp_path):
    make_rfw(tmp_path, races=("African",))
    pairs = tmp_path / "test" / "txts" / "African" / "African_pairs.txt"
    pairs.write_bytes(b"\xef\xbb\xbf" + pairs.read_bytes())
    assert len(read_rfw(tmp_path)) == 4


def test_rfw_nan_landmarks_named_at_file_and_line(tmp_path):
    make_rfw(tmp_path, races=("African",), unaligned=True)
    lmk = tmp_path / "test" / "txts" / "African" / "African_lmk.txt"
    lines = lmk.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:2] + ["nan"] * 10)
    lmk.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"African_lmk\.txt:2: landmarks contain NaN"):
        read_rfw(tmp_path)


def test_rfw_missing_landmark_file_is_named(tmp_path):
    make_rfw(tmp_path, races=("African",), unaligned=True)
    (tmp_path / "test" / "txts" / "African" / "African_lmk.txt").unlink()
    with pytest.raises(DataError, match=r"not an aligned 112x112 face, and the landmark file .*African_lmk\.txt "
                                        r"does not exist"):
        read_rfw(tmp_path)


def test_rfw_negative_image_number(tmp_path):
    make_rfw(tmp_path, races=("African",))
    (tmp_path / "test" / "txts" / "African" / "African_pairs.txt").write_text("m.Af0\t1\t-2\n")
    with pytest.raises(DataError, match=r"African_pairs\.txt:1: image number '-2' is negative"):
        read_rfw(tmp_path)


# --- .bin -----------------------------------------------------------------------------------------
def test_bin_is_unpickled_from_the_file_not_a_copy_in_memory(tmp_path):
    # 40 "images" of 512 KiB: reading the file into bytes first would double the peak
    blobs = [np.random.default_rng(i).bytes(1 << 19) for i in range(40)]
    path = tmp_path / "big.bin"
    path.write_bytes(pickle.dumps((blobs, [True] * 20), protocol=4))
    del blobs
    size = path.stat().st_size
    tracemalloc.start()
    try:
        vs = read_bin(path, validate=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(vs) == 20 and peak < 1.5 * size, (peak, size)


# --- RecordIO .idx --------------------------------------------------------------------------------
def _idx(tmp_path, text):
    p = tmp_path / "t.idx"
    p.write_bytes(text)
    return p


def test_idx_fast_path_in_chunks_matches_the_line_parser(tmp_path, monkeypatch):
    text = b"".join(b"%d\t%d\n" % (k, 8 * k) for k in range(1000)) + b"1000\t8000"  # no final newline
    p = _idx(tmp_path, text)
    want = recordio._read_idx_lines(p, 10**6)

    def no_fallback(*_):
        raise AssertionError("the fast path fell back to the line parser")

    monkeypatch.setattr(recordio, "_IDX_CHUNK", 37)  # chunk borders inside lines
    monkeypatch.setattr(recordio, "_read_idx_lines", no_fallback)
    keys, offsets = recordio._read_idx(p, 10**6)
    assert np.array_equal(keys, want[0]) and np.array_equal(offsets, want[1]) and len(keys) == 1001


@pytest.mark.parametrize("text,msg", [(b"0\t0\n1\t8\t9\n", r"t\.idx:2: expected 'key<TAB>offset'"),
                                      (b"0\t0\n1\tx\n", r"t\.idx:2: key and offset must be integers"),
                                      (b"0\t0\n1\t999999\n", r"t\.idx:2: offset 999999 of key 1 is past the end")])
def test_idx_errors_name_the_line(tmp_path, text, msg):
    with pytest.raises(DataError, match=msg):
        recordio._read_idx(_idx(tmp_path, text), 1000)


# --- image folders --------------------------------------------------------------------------------
def test_loose_images_beside_identity_folders_are_not_dropped(tmp_path):
    from qfair.data import ImageFolder

    _faces(tmp_path, 5)  # loose
    _faces(tmp_path / "id1", 2, start=5)
    with pytest.raises(DataError, match=r"5 loose images \(0\.png, 1\.png, 2\.png and 2 more\) beside the "
                                        r"<identity>/ sub-folders"):
        ImageFolder(tmp_path)
    # images only (calibration): every image counts, the 5 loose ones too (once it saw only the 2 in id1/)
    assert sum(len(b) for b in calibration_batches(f"real:{tmp_path}", 7, 4)) == 7
    # with labels (training data): reading it flat would drop the labels silently, so it is an error naming the
    # files and the fix
    with pytest.raises(DataError, match=r"5 loose images \(0\.png.*Move them into an <identity>/ sub-folder.*"
                                        r"synthetic:"):
        calibration_batches(f"real:{tmp_path}", 7, 4, with_labels=True)
    # the fix the message names: read without labels, all 7 images
    assert sum(len(b) for b in calibration_batches(f"synthetic:{tmp_path}", 7, 4)) == 7


# --- mixing and calibration -----------------------------------------------------------------------
@pytest.mark.parametrize("ratio", ["nan", "inf", "-0.5"])
def test_mix_ratio_must_be_finite(ratio):
    with pytest.raises(DataError, match=f"ratio '{ratio}' must be a finite number"):
        parse_mix(f"builtin@{ratio}|builtin-synthetic@1")
    with pytest.raises(DataError, match="finite"):
        mix_calibration([("builtin", float(ratio)), ("builtin-synthetic", 1.0)], 4, 2)
    with pytest.raises(DataError, match="ratios"):
        MixedSource([[0], [1]], [float(ratio), 1.0], 4)


def test_mix_passes_skip_corrupt_to_its_sources(tmp_path):
    _faces(tmp_path / "faces", 6)
    (tmp_path / "faces" / "bad.png").write_bytes(b"\x89PNG broken")
    spec = f"mix:real:{tmp_path / 'faces'}@1|builtin@1"
    with pytest.raises(DataError, match=r"bad\.png: corrupt"):
        calibration_batches(spec, 14, 7)
    with pytest.warns(UserWarning, match="skipped 1 corrupt images"):
        batches = calibration_batches(spec, 14, 7, skip_corrupt=True)
    assert sum(len(b) for b in batches) == 13  # 6 readable faces + 7 built-in


# --- group labels ---------------------------------------------------------------------------------
def test_group_folder_with_an_empty_group_is_an_error(tmp_path):
    _faces(tmp_path / "A" / "id1", 2)
    _faces(tmp_path / "B" / "id1", 2)
    (tmp_path / "C" / "id1").mkdir(parents=True)
    (tmp_path / "C" / "id1" / "notes.txt").write_text("todo")
    with pytest.raises(DataError, match=r"group folder\(s\) C hold no images"):
        GroupFolder(tmp_path)


@pytest.mark.parametrize("content", [
    {"format": "qfair-group-classifier-v1"},
    {"format": "qfair-group-classifier-v1", "group_names": ["a", "b"], "weight": [[1.0]], "bias": [0.0]},
    {"format": "qfair-group-classifier-v1", "group_names": ["a", "b"], "weight": torch.zeros(3, 4),
     "bias": torch.zeros(2)},
    {"format": "qfair-group-classifier-v1", "group_names": ["a", "b"], "weight": torch.full((2, 4), float("nan")),
     "bias": torch.zeros(2)},
])
def test_damaged_group_head_is_a_data_error(tmp_path, content):
    torch.save(content, tmp_path / "head.pt")
    with pytest.raises(DataError, match=r"head\.pt: damaged group classifier.*qfair groups train"):
        GroupClassifier.load(tmp_path / "head.pt")


def test_group_head_refuses_embeddings_of_another_width():
    clf = GroupClassifier(["a", "b"], np.zeros((2, 8), np.float32), np.zeros(2, np.float32))
    assert clf.predict_proba(np.ones((3, 8))).shape == (3, 2)
    with pytest.raises(DataError, match="reads 8-dim embeddings but got shape"):
        clf.predict_proba(np.ones((3, 4)))


def test_group_head_file_cannot_run_code(tmp_path):
    from qfair.utils.errors import QfairError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    torch.save({"format": "qfair-group-classifier-v1", "x": Evil()}, buf)
    (tmp_path / "head.pt").write_bytes(buf.getvalue())
    with pytest.raises(QfairError, match="refused to load"):
        GroupClassifier.load(tmp_path / "head.pt")
    assert not marker.exists()
