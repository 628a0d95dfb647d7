"""LFW-style k-fold verification accuracy (README references [3]).

For each fold, the threshold that maximises accuracy on the other folds is applied to the held-out
fold; accuracy is the mean over folds and the reported "+-" is their std (ddof=0).

Two threshold searches over the squared L2 distance ``d`` of unit embeddings (``d = 2 - 2 cos``),
predicting "same" when ``d < t``:

* ``grid``: thresholds ``np.arange(0, 4, 0.01)`` with ties to the smallest threshold, exactly as
  insightface's arcface_torch verification code, to reproduce published numbers;
* ``exact``: every distinct split of the sorted training distances (threshold at the midpoint of
  neighbouring distinct distances), found with one sort and cumulative sums, O(n log n) per fold.
  Calling nothing "same" gives ``-inf`` (as the grid's 0, no distance is below it); calling every
  training pair "same", the next float above the largest training distance.

Both count correct pairs with ``searchsorted``/``cumsum`` instead of looping over thresholds.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from ..utils.errors import DataError

GRID_THRESHOLDS = np.arange(0, 4, 0.01)  # insightface: thresholds = np.arange(0, 4, 0.01)
Mode = Literal["exact", "grid"]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in the input's floating dtype. Zero rows raise DataError."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        rows = np.flatnonzero((norm[:, 0] == 0) | ~np.isfinite(norm[:, 0]))[:10].tolist()
        raise DataError(f"embeddings with zero or non-finite norm at rows {rows}; cannot normalise")
    return x / norm


def squared_distance(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared L2 distance ``(P,)`` between rows of ``(P, D)`` unit embeddings, as the reference computes it."""
    diff = np.subtract(emb1, emb2)
    return np.sum(np.square(diff), axis=1)


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold index per item for ``n_folds`` contiguous folds, the first ``n % n_folds`` one longer
    (sklearn ``KFold(shuffle=False)``, used by the reference code)."""
    if n_folds < 2:
        raise DataError(f"n_folds must be >= 2, got {n_folds}")
    if n < n_folds:
        raise DataError(f"{n} pairs cannot be split into {n_folds} folds; use fewer folds or more pairs")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def _best_grid(d: np.ndarray, same: np.ndarray, thresholds: np.ndarray = GRID_THRESHOLDS) -> float:
    """Grid threshold maximising train accuracy; ``argmax`` keeps the first (smallest) on ties."""
    ds = np.sort(d[same])
    dd = np.sort(d[~same])
    correct = np.searchsorted(ds, thresholds, side="left") + (len(dd) - np.searchsorted(dd, thresholds, side="left"))
    return float(thresholds[int(np.argmax(correct))])


def _best_exact(d: np.ndarray, same: np.ndarray) -> float:
    """Exact optimum over all splits of the sorted distances; ties to the smallest threshold."""
    order = np.argsort(d, kind="stable")
    ds, ss = d[order], same[order]
    n = len(ds)
    n_diff = int((~ss).sum())
    # k = number of smallest distances predicted "same" (k = 0..n)
    tp = np.concatenate(([0], np.cumsum(ss)))
    fn_diff = np.concatenate(([0], np.cumsum(~ss)))  # different pairs wrongly predicted "same"
    correct = tp + (n_diff - fn_diff)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = ds[1:] > ds[:-1]  # a split inside a run of equal distances is not realisable
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:  # best to call nothing "same": a threshold below every distance, held-out pairs included
        return float("-inf")
    if k == n:
        return float(np.nextafter(ds[-1], np.inf))
    lo, hi = float(ds[k - 1]), float(ds[k])
    t = lo + (hi - lo) / 2.0
    return t if t > lo else hi


def kfold_predictions(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray, mode: Mode = "exact"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-validated predictions. Returns ``(correct (P,) bool, thresholds (F,), fold_acc (F,))``.

    ``dist``: squared L2 distances (P,); ``folds``: fold label per pair (any ints, F distinct).
    """
    d = np.asarray(dist, dtype=np.float64)  # float32 -> float64 is exact; comparisons match the reference
    same = np.asarray(issame, dtype=bool)
    folds = np.asarray(folds)
    if not (len(d) == len(same) == len(folds)):
        raise DataError(f"lengths differ: {len(d)} distances, {len(same)} labels, {len(folds)} fold labels")
    if not np.all(np.isfinite(d)):
        raise DataError(f"non-finite distances (nan/inf) at positions {np.flatnonzero(~np.isfinite(d))[:10].tolist()} "
                        f"of the {len(d)} distances given; check the embeddings or scores of those pairs")
    labels = np.unique(folds)
    if len(labels) < 2:
        raise DataError(f"need at least 2 folds, got {len(labels)} (with {len(d)} pairs)")
    if mode not in ("exact", "grid"):
        raise DataError(f"unknown threshold search mode '{mode}'; use 'exact' or 'grid'")
    best = _best_grid if mode == "grid" else _best_exact
    correct = np.zeros(len(d), dtype=bool)
    thresholds = np.zeros(len(labels))
    acc = np.zeros(len(labels))
    for i, f in enumerate(labels):
        test = folds == f
        t = best(d[~test], same[~test])
        pred = d[test] < t
        ok = pred == same[test]
        correct[test] = ok
        thresholds[i] = t
        acc[i] = float(np.count_nonzero(ok)) / ok.size  # as the reference: float(tp + tn) / size
    return correct, thresholds, acc


def kfold_accuracy(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, n_folds: int = 10,
                   mode: Mode = "exact") -> tuple[float, float]:
    """Verification accuracy in percent: ``(mean over folds, std over folds (ddof=0))``.

    ``emb1``, ``emb2``: (P, D) embeddings of the two images of each pair (normalised here; flip TTA,
    if any, is applied when embedding). Folds are contiguous, as in the reference protocol.
    """
    e1, e2 = np.asarray(emb1), np.asarray(emb2)
    if e1.shape != e2.shape or e1.ndim != 2:
        raise DataError(f"emb1 and emb2 must both be (P, D), got {e1.shape} and {e2.shape}")
    if len(issame) != len(e1):
        raise DataError(f"{len(e1)} embedding pairs but {len(issame)} labels")
    dist = squared_distance(l2_normalize(e1), l2_normalize(e2))
    _, _, acc = kfold_predictions(dist, issame, contiguous_folds(len(dist), n_folds), mode)
    return float(np.mean(acc) * 100.0), float(np.std(acc) * 100.0)
