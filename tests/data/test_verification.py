import numpy as np
import pytest
import torch

from qfair.data import BENCHMARKS, ImageStore, LazyImageStore, VerificationSet, make_folds, open_benchmark
from qfair.data.preprocess import encode_png
from qfair.utils.errors import DataError


def _store(n=6):
    return ImageStore(torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8))


def test_make_folds_contiguous_per_group():
    groups = np.array(["a"] * 6000 + ["b"] * 20)
    f = make_folds(groups)
    assert np.array_equal(f[:6000], np.arange(6000) // 600)
    assert np.array_equal(f[6000:], np.arange(20) // 2)
    # uneven counts: the first n % 10 folds one longer, as the evaluator's contiguous_folds (sklearn KFold)
    from qfair.eval.verification import contiguous_folds

    for n in (65, 6005, 13):
        assert np.array_equal(make_folds(np.array(["g"] * n)), contiguous_folds(n, 10))  # 65: was 7,6,7,6,...


def test_n_folds_applies_to_benchmarks_without_their_own_folds():
    from qfair.eval import evaluate

    rng = np.random.default_rng(0)
    n = 40
    pairs = np.stack([np.arange(n) % 6, (np.arange(n) + 1) % 6], 1)
    plain = VerificationSet("plain", _store(6), pairs, rng.random(n) < 0.5, np.array(["all"] * n))
    own = VerificationSet("own", _store(6), pairs, plain.issame, plain.groups, folds=np.arange(n) % 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 8))
    five = evaluate(model, plain, n_folds=5, n_bootstrap=0)
    assert len(np.unique(five.pairs.folds)) == 5 and five.settings["folds"] == "5 contiguous per group"  # was 10
    mine = evaluate(model, own, n_folds=5, n_bootstrap=0)
    assert np.array_equal(mine.pairs.folds, own.folds) and mine.settings["folds"] == "the benchmark's own"


def test_image_store_batches_cover_all_once():
    store = _store(5)
    seen = []
    for idx, x in store.batches(2):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 112, 112)
        assert torch.allclose(x, (store.get_many(idx.tolist()).float() / 255 - 0.5) / 0.5)
        seen += idx.tolist()
    assert seen == list(range(5))


def test_lazy_store_matches_eager_and_workers():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    lazy = LazyImageStore([encode_png(i) for i in imgs], [f"im{i}" for i in range(5)])
    assert torch.equal(lazy[3], torch.from_numpy(imgs[3]).permute(2, 0, 1))
    a = torch.cat([x for _, x in lazy.batches(2)])
    b = torch.cat([x for _, x in lazy.batches(2, num_workers=1)])
    assert torch.equal(a, b) and a.shape == (5, 3, 112, 112)


def test_lazy_validate_skip_counts():
    good = encode_png(np.zeros((112, 112, 3), np.uint8))
    lazy = LazyImageStore([good, b"junk", good], ["a", "b.jpg", "c"])
    with pytest.raises(DataError, match="b.jpg"):
        lazy.validate()
    store, bad = lazy.validate(skip_corrupt=True)
    assert bad == [1] and len(store) == 3


def test_verification_set_checks_and_select():
    vs = VerificationSet("t", _store(6), pairs=[[0, 1], [2, 3], [4, 5], [0, 5]], issame=[1, 0, 1, 0],
                         groups=["a", "a", "b", "b"], pair_ids=[["x", "x"], ["y", "z"], ["u", "u"], ["x", "v"]])
    assert vs.group_names() == ["a", "b"] and vs.folds.tolist() == [0, 1, 0, 1]
    sub = vs.group("b")
    assert len(sub.images) == 3 and sub.pairs.tolist() == [[1, 2], [0, 2]]
    assert torch.equal(sub.images[1], vs.images[4]) and torch.equal(sub.images[0], vs.images[0])
    assert vs.summary()["groups"]["a"] == {"pairs": 2, "genuine": 1, "impostor": 1}
    with pytest.raises(DataError, match="out of range"):
        VerificationSet("t", _store(2), pairs=[[0, 2]], issame=[1], groups=["a"])
    with pytest.raises(DataError, match="no group"):
        vs.group("zzz")


def test_registry_and_spec_errors(tmp_path):
    assert {"bin", "rfw", "csv", "builtin"} <= set(BENCHMARKS.names())
    with pytest.raises(DataError, match="does not exist"):
        open_benchmark("lfw:/nonexistent/lfw.bin")
    with pytest.raises(DataError, match="cannot tell"):
        p = tmp_path / "x.weird"
        p.write_text("hi")
        open_benchmark(f"foo:{p}")


def test_open_builtin_spec():
    vs = open_benchmark("builtin:tiny")
    assert vs.meta["synthetic"] and len(vs.group_names()) == 4
    assert sorted(set(vs.folds.tolist())) == list(range(10))


def test_open_builtin_numeric_size():
    vs = open_benchmark("builtin:30")
    # 30 genuine + 30 impostor pairs in each of the 4 groups, balanced across the 10 folds
    assert len(vs.issame) == 4 * 60 and int(vs.issame.sum()) == 4 * 30
    assert vs.name == "builtin-30"
    with pytest.raises(DataError, match="number of genuine pairs"):
        open_benchmark("builtin:huge")


def test_unknown_kind_with_a_missing_path_says_how_the_spec_was_read():
    from qfair.data import open_benchmark
    from qfair.utils.errors import DataError

    with pytest.raises(DataError, match=r"'foo:bar': path bar does not exist \('foo' is not a known kind.*rfw"):
        open_benchmark("foo:bar")
