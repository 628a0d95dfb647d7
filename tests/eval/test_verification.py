"""k-fold verification: grid mode against a plain re-implementation of the reference protocol
(README references [3]), exact mode against brute force over every candidate threshold."""
import numpy as np
import pytest

from qfair.eval import kfold_accuracy
from qfair.eval.verification import contiguous_folds, kfold_predictions
from qfair.utils.errors import DataError


def _reference_grid(emb1, emb2, issame, nfolds=10):
    """Written plainly after the insightface description: KFold(shuffle=False), thresholds
    0, 0.01, ..., 3.99, 'same' if dist < t, first maximum wins; accuracy = float(tp + tn) / size."""
    e1 = emb1 / np.linalg.norm(emb1, axis=1, keepdims=True)
    e2 = emb2 / np.linalg.norm(emb2, axis=1, keepdims=True)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(dist)
    sizes = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    accuracy = np.zeros(nfolds)
    start = 0
    for f in range(nfolds):
        test = np.arange(start, start + sizes[f])
        train = np.setdiff1d(np.arange(n), test)
        start += sizes[f]
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            pred = np.less(dist[train], t)
            tp = np.sum(np.logical_and(pred, issame[train]))
            tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(issame[train])))
            acc_train[i] = float(tp + tn) / len(train)
        best = int(np.argmax(acc_train))
        pred = np.less(dist[test], thresholds[best])
        tp = np.sum(np.logical_and(pred, issame[test]))
        tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(issame[test])))
        accuracy[f] = float(tp + tn) / len(test)
    return np.mean(accuracy) * 100.0, np.std(accuracy) * 100.0


def _random_pairs(seed, n, dim=16, dtype=np.float32, noise=1.0):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    e1 = rng.normal(size=(n, dim)).astype(dtype)
    e2 = (e1 + noise * rng.normal(size=(n, dim))).astype(dtype)
    e2[~issame] = rng.normal(size=(int((~issame).sum()), dim)).astype(dtype)
    return e1, e2, issame


@pytest.mark.parametrize("seed,n,dtype", [(0, 600, np.float32), (1, 1003, np.float32), (2, 777, np.float64),
                                          (3, 240, np.float32)])
def test_grid_equals_plain_reference_to_the_last_digit(seed, n, dtype):
    e1, e2, same = _random_pairs(seed, n, dtype=dtype)
    got = kfold_accuracy(e1, e2, same, n_folds=10, mode="grid")
    want = _reference_grid(e1, e2, same)
    assert got == want  # exact equality, not approx


def test_grid_with_quantised_distances_has_ties_resolved_to_smallest():
    # embeddings on a coarse lattice give many equal distances and equal train accuracies
    rng = np.random.default_rng(5)
    e1 = rng.integers(-2, 3, size=(400, 4)).astype(np.float64) + 0.5
    e2 = rng.integers(-2, 3, size=(400, 4)).astype(np.float64) + 0.5
    same = rng.random(400) < 0.5
    assert kfold_accuracy(e1, e2, same, mode="grid") == _reference_grid(e1, e2, same)


def _brute_exact(d, same, folds):
    correct = np.zeros(len(d), bool)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        u = np.unique(d[tr])
        # calling nothing "same" is a threshold below every distance (-inf), held-out pairs included
        cands = np.concatenate(([-np.inf], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]))
        accs = [np.mean((d[tr] < t) == same[tr]) for t in cands]
        t = cands[int(np.argmax(accs))]
        correct[te] = (d[te] < t) == same[te]
    return correct


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_brute_force(seed):
    e1, e2, same = _random_pairs(seed, 300, dim=8, dtype=np.float64, noise=1.5)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    d = ((e1 - e2) ** 2).sum(1)
    folds = contiguous_folds(300, 10)
    got, _, _ = kfold_predictions(d, same, folds, "exact")
    np.testing.assert_array_equal(got, _brute_exact(d, same, folds))


def test_separable_data_exact_is_perfect_and_grid_takes_smallest_threshold():
    rng = np.random.default_rng(0)
    same = np.arange(200) % 2 == 0
    d = np.where(same, rng.uniform(0.1, 0.9, 200), rng.uniform(1.1, 1.9, 200))
    folds = contiguous_folds(200, 10)
    correct, _, acc = kfold_predictions(d, same, folds, "exact")
    assert correct.all() and np.all(acc == 1.0)
    _, thr, _ = kfold_predictions(d, same, folds, "grid")
    for f in range(10):  # ties to the smallest: first grid value above the largest genuine train distance
        top = d[(folds != f) & same].max()
        assert thr[f] == np.arange(0, 4, 0.01)[np.arange(0, 4, 0.01) > top][0]


def test_contiguous_folds_match_sklearn_kfold_sizes():
    f = contiguous_folds(1003, 10)
    assert np.bincount(f).tolist() == [101, 101, 101] + [100] * 7
    assert np.all(np.diff(f) >= 0)


def test_bad_inputs():
    e1, e2, same = _random_pairs(0, 5)
    with pytest.raises(DataError, match="cannot be split"):
        kfold_accuracy(e1, e2, same)
    with pytest.raises(DataError, match="must both be"):
        kfold_accuracy(e1, e2[:, :3], same)
    with pytest.raises(DataError, match="unknown threshold search mode"):
        kfold_predictions(np.ones(20), np.ones(20, bool), contiguous_folds(20, 10), "nope")
    e1, e2, same = _random_pairs(1, 20)
    e1[2] = 0
    with pytest.raises(DataError, match="zero or non-finite norm at rows \\[2\\]"):
        kfold_accuracy(e1, e2, same, n_folds=2)
