"""Error rates of similarity scores at a threshold (README references [2]).

Scores are cosine similarities (higher = more alike); a pair is accepted as "same" when
``score >= t``. FMR(t) = impostor scores >= t / impostors; FNMR(t) = genuine scores < t / genuines.
"""
from __future__ import annotations

import numpy as np

from ..utils.errors import DataError


def threshold_at_fmr(impostor_scores: np.ndarray, target_fmr: float) -> float:
    """Smallest threshold whose FMR on ``impostor_scores`` does not exceed ``target_fmr``.

    With n impostors at most k = floor(target * n) may be accepted: the threshold sits just above the
    (k+1)-th highest score (ties are all rejected together, so the FMR never exceeds the target).
    """
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise DataError("cannot choose a threshold at a target FMR: there are no impostor pairs")
    if not 0.0 <= target_fmr <= 1.0:
        raise DataError(f"target FMR must be in [0, 1], got {target_fmr}")
    k = int(np.floor(target_fmr * n + 1e-9))
    if k >= n:
        return -np.inf
    v = s[n - k - 1]  # highest score that must be rejected
    return float(np.nextafter(v, np.inf))


def rates_at(scores: np.ndarray, issame: np.ndarray, t: float) -> tuple[float, float]:
    """``(FMR, FNMR)`` at threshold ``t``; NaN for a rate whose pairs are absent."""
    s = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    n_imp, n_gen = int((~same).sum()), int(same.sum())
    fmr = float(np.count_nonzero(s[~same] >= t)) / n_imp if n_imp else float("nan")
    fnmr = float(np.count_nonzero(s[same] < t)) / n_gen if n_gen else float("nan")
    return fmr, fnmr


def det_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, fmr, fnmr)`` at every distinct score (ascending thresholds)."""
    s = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    gen, imp = np.sort(s[same]), np.sort(s[~same])
    t = np.unique(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        fmr = (len(imp) - np.searchsorted(imp, t, side="left")) / len(imp) if len(imp) else np.full(len(t), np.nan)
        fnmr = np.searchsorted(gen, t, side="left") / len(gen) if len(gen) else np.full(len(t), np.nan)
    return t, np.asarray(fmr, float), np.asarray(fnmr, float)


def eer(scores: np.ndarray, issame: np.ndarray) -> float:
    """Equal error rate: where FMR and FNMR cross, linearly interpolated between distinct thresholds."""
    same = np.asarray(issame, dtype=bool)
    if same.all() or (~same).all():
        return float("nan")
    _, fmr, fnmr = det_curve(scores, same)
    fmr = np.concatenate((fmr, [0.0]))  # a threshold above every score
    fnmr = np.concatenate((fnmr, [1.0]))
    diff = fnmr - fmr  # increases from -1 to +1
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float((fmr[i] + fnmr[i]) / 2.0)
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fmr[i - 1] + w * (fmr[i] - fmr[i - 1]))


def auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC: P(genuine score > impostor score) + P(tie) / 2 (Mann-Whitney, mid-ranks)."""
    s = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    n_gen, n_imp = int(same.sum()), int((~same).sum())
    if n_gen == 0 or n_imp == 0:
        return float("nan")
    srt = np.sort(s)
    ranks = (np.searchsorted(srt, s, side="left") + np.searchsorted(srt, s, side="right") + 1) / 2.0
    return float((ranks[same].sum() - n_gen * (n_gen + 1) / 2.0) / (n_gen * n_imp))


def fnmr_at_fmr(scores: np.ndarray, issame: np.ndarray, target_fmr: float) -> float:
    """FNMR at this set's own threshold for ``target_fmr`` (NaN without impostors or genuines)."""
    same = np.asarray(issame, dtype=bool)
    if same.all() or (~same).all():
        return float("nan")
    t = threshold_at_fmr(np.asarray(scores)[~same], target_fmr)
    return rates_at(scores, same, t)[1]
