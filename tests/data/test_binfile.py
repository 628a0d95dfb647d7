import os
import pickle

import numpy as np
import pytest
import torch

from qfair.data import read_bin, write_bin
from qfair.data.binfile import restricted_loads
from qfair.data.preprocess import encode_png
from qfair.utils.errors import DataError, UnsafeFileError


def _imgs(n, seed=0):
    return [np.random.default_rng(seed + i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_arrays", [False, True])
def test_roundtrip(tmp_path, protocol, as_arrays):
    imgs = _imgs(4)
    # pair 2 repeats images 0 and 1: stored once
    path = write_bin(tmp_path / "lfw.bin", imgs + imgs[:2], [True, False, True], as_arrays=as_arrays,
                     protocol=protocol)
    vs = read_bin(path)
    assert vs.name == "lfw" and len(vs.images) == 4 and vs.pairs.tolist() == [[0, 1], [2, 3], [0, 1]]
    assert vs.issame.tolist() == [True, False, True] and set(vs.groups) == {"all"} and vs.pair_ids is None
    for i in range(4):
        assert torch.equal(vs.images[i], torch.from_numpy(imgs[i]).permute(2, 0, 1))


def test_rfw_race_from_filename(tmp_path):
    path = write_bin(tmp_path / "Indian_test.bin", _imgs(2), [False])
    assert read_bin(path).groups.tolist() == ["Indian"]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _EvilSystem:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("cls", [_Evil, _EvilSystem])
def test_code_running_pickle_refused_and_nothing_runs(tmp_path, cls):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([encode_png(_imgs(1)[0]), cls(str(marker))], [True]))
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(UnsafeFileError, match="evil.bin"):
        read_bin(path)
    assert not marker.exists()


def test_object_and_float_arrays_refused():
    with pytest.raises(UnsafeFileError):
        restricted_loads(pickle.dumps(np.array([1, 2], dtype=object)))
    with pytest.raises(UnsafeFileError):
        restricted_loads(pickle.dumps(np.array([1.0])))
    with pytest.raises(UnsafeFileError):
        restricted_loads(pickle.dumps(np.zeros(2, dtype=[("a", "i4")])))  # structured: not plain integers


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_array", [False, True])
def test_issame_stored_as_integers_reads(tmp_path, protocol, as_array):
    # some converters write issame as an int64 array or a list of numpy int64 scalars (0/1)
    imgs = [encode_png(a) for a in _imgs(4)]
    issame = np.array([1, 0], dtype=np.int64)
    path = tmp_path / "ints.bin"
    path.write_bytes(pickle.dumps((imgs, issame if as_array else list(issame)), protocol=protocol))
    assert read_bin(path).issame.tolist() == [True, False]
    path.write_bytes(pickle.dumps((imgs, np.array([1, 2], dtype=np.int64)), protocol=protocol))
    with pytest.raises(DataError, match=r"issame_list\[1\] = 2 is not a boolean"):
        read_bin(path)


def test_bad_structures(tmp_path):
    p = tmp_path / "x.bin"
    for obj, msg in [([1, 2, 3], "expected a pickle"), (([b"a"], [True]), "2 per pair"),
                     (([b"a", b"b"], [7]), "not a boolean"), (([1, 2], [True]), "expected encoded")]:
        p.write_bytes(pickle.dumps(obj))
        with pytest.raises(DataError, match=msg):
            read_bin(p)
    p.write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:-3])
    with pytest.raises(DataError, match="not a valid .bin"):
        read_bin(p)
    with pytest.raises(DataError, match="not found"):
        read_bin(tmp_path / "nope.bin")


def test_corrupt_image_error_and_skip(tmp_path):
    imgs = _imgs(4)
    bins = [encode_png(i) for i in imgs]
    bins[2] = bins[2][:100]  # truncated PNG
    p = tmp_path / "c.bin"
    p.write_bytes(pickle.dumps((bins, [True, False])))
    with pytest.raises(DataError, match=r"c.bin\[image 2\]"):
        read_bin(p)
    vs = read_bin(p, skip_corrupt=True)
    assert len(vs) == 1 and vs.meta["skipped_images"] == 1 and vs.meta["skipped_pairs"] == 1
    assert len(vs.images) == 2
