"""Group-blind permutation null: is a model's change in per-group accuracy, STD or SER more than the
noise of its size would give?

Any perturbation of a model's pair scores, even one that treats every group alike, moves the
per-group k-fold accuracies, and it moves SER by construction: the same added noise costs the
best group (few errors) a larger *relative* error increase than the worst one, so SER tends to
fall. A compressed model whose SER dropped is not necessarily fairer, and a fine-tuned one whose
SER did not come back is not necessarily less faithful. This module gives the yardstick.

Null hypothesis: the change from ``ref`` to ``other`` in each pair's distance does not depend on
the pair's group. A compressed model changes distances systematically (genuine and impostor pairs
apart, and as a function of the distance itself: a uniform compression of the score range moves
every pair but costs no accuracy; so does a shift of one group's distances, absorbed by the group's
own k-fold thresholds), plus a pair-specific residual. The systematic part (a cubic in the reference
distance per pair kind, common to all groups, plus one shift per group) is fitted by least squares
and kept; the residuals are exchangeable across groups under the null, so each draw shuffles them
among pairs of the same kind and a similar reference distance (deciles), whatever their group, adds
trend and shuffled residuals to the reference distances and re-runs the per-group k-fold protocol
with the reference's folds and threshold search. Shuffling the raw changes instead would turn the
accuracy-neutral trend into noise and make every group look better than its null (demo MobileFaceNet
W6A6, real calibration, seed 0: the observed AVG lies 0.36 points above the null mean with raw changes
shuffled, 0.21 with the trend kept but not the group shifts, 0.01 with both kept). The draws give the
per-group accuracies and AVG / STD / SER expected from group-blind change of that size alone, with a
95% interval and a two-sided permutation p-value (k + 1) / (n + 1) for the observed values
(Holm-corrected across groups).

Pure numpy; the result is plain JSON-able data.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..utils.errors import DataError
from .fairness import summary_arrays
from .metrics import _codes
from .result import EvalResult
from .stats import holm, percentile_interval
from .verification import kfold_predictions

METRICS = ("avg", "std", "ser")


def _group_accuracies(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray, masks: list[np.ndarray],
                      mode: str) -> np.ndarray:
    """Per-group k-fold accuracy in percent (G,), as :func:`qfair.eval.metrics.evaluate_arrays`."""
    out = np.empty(len(masks))
    for g, m in enumerate(masks):
        _, _, acc = kfold_predictions(dist[m], issame[m], folds[m], mode)  # type: ignore[arg-type]
        out[g] = float(np.mean(acc) * 100.0)
    return out


def _trend_and_blocks(base: np.ndarray, change: np.ndarray, issame: np.ndarray, codes: np.ndarray,
                      n_groups: int, n_bins: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The accuracy-neutral part of the change (P,), by least squares over all pairs: a cubic in the
    reference distance per pair kind (common to all groups) plus one shift per group (absorbed by the
    group's own thresholds); and the exchange blocks: pair kind x quantile bin of the reference distance."""
    cols, blocks = [], []
    for kind in (True, False):
        m = issame == kind
        if not m.any():
            continue
        b = base[m]
        x = (base - b.mean()) / (b.std() or 1.0)  # centred and scaled: a well-conditioned fit
        cols += [m * x ** p for p in range(min(3, len(np.unique(b)) - 1) + 1)]
        idx = np.flatnonzero(m)
        edges = np.quantile(b, np.linspace(0, 1, n_bins + 1)[1:-1])
        bins = np.searchsorted(edges, b, side="right")
        blocks += [idx[bins == i] for i in np.unique(bins)]
    cols += [(codes == g).astype(np.float64) for g in range(1, n_groups)]
    X = np.stack(cols, axis=1)  # (P, up to 8 + G - 1)
    coef, *_ = np.linalg.lstsq(X, change, rcond=None)
    return X @ coef, blocks


def _p_two_sided(draws: np.ndarray, observed: float) -> float:
    """Two-sided permutation p-value of ``observed`` against ``draws`` (finite draws only), centred on their
    mean: (k + 1) / (n + 1) with k the draws at least as far from the centre, so the smallest possible p is
    1 / (n_draws + 1) (Phipson & Smyth 2010: a permutation p-value is never 0)."""
    d = draws[np.isfinite(draws)]
    if not np.isfinite(observed) or d.size == 0:
        return float("nan")
    centre = d.mean()
    extreme = np.count_nonzero(np.abs(d - centre) >= abs(observed - centre) - 1e-12)
    return float((1 + extreme) / (1 + d.size))


def group_blind_null(ref: EvalResult, other: EvalResult, *, n_draws: int = 200, seed: int = 0,
                     ddof: int | None = None, n_bins: int = 10) -> dict[str, Any]:
    """Compare ``other``'s per-group accuracies and AVG / STD / SER with what group-blind change of the
    same size would give ``ref``. Both results must come from ``evaluate`` on the same pairs.

    Returns ``{"n_draws", "seed", "mean_abs_score_change", "per_group": {g: {...}}, "metrics": {k: {...}}}``;
    each entry has ``reference``, ``observed`` (the other model), ``expected`` (mean over draws),
    ``interval`` (2.5 / 97.5 percentiles of the draws) and ``p`` (two-sided permutation p-value
    (k + 1) / (n + 1), at least 1 / (n_draws + 1); per group also ``p_holm`` and ``excess_error_pp`` =
    expected - observed accuracy, > 0 when the group lost more than group-blind change explains).
    """
    if n_draws < 1:
        raise DataError(f"the group-blind null needs at least 1 draw, got n_draws={n_draws}")
    pr, po = ref.pairs, other.pairs
    if pr is None or po is None:
        raise DataError("the group-blind null needs the per-pair data of both results (EvalResult.pairs); "
                        "results loaded from metrics.json do not have it: evaluate the models again")
    if pr.fingerprint() != po.fingerprint():
        raise DataError(f"'{other.name}' and '{ref.name}' were not evaluated on the same pairs; the "
                        "group-blind null needs both models on the same benchmark")
    mode = str(ref.settings.get("mode", "exact"))
    ddof = int(ref.settings.get("ddof", 1)) if ddof is None else int(ddof)
    order = list(ref.groups)
    codes = _codes(pr.groups, order)
    masks = [codes == g for g in range(len(order))]
    issame = np.asarray(pr.issame, dtype=bool)
    folds = np.asarray(pr.folds)
    base = np.asarray(pr.dist, dtype=np.float64)
    change = np.asarray(po.dist, dtype=np.float64) - base  # (P,) per-pair change in squared distance
    trend, blocks = _trend_and_blocks(base, change, issame, codes, len(order), n_bins)
    resid = change - trend
    rng = np.random.default_rng(seed)

    draws = np.empty((n_draws, len(order)))  # (K, G) accuracies under the null
    for k in range(n_draws):
        shuffled = np.empty_like(resid)
        for idx in blocks:  # exchange residuals among pairs of one kind and similar distance, across groups
            shuffled[idx] = resid[idx[rng.permutation(idx.size)]]
        dist = np.clip(base + trend + shuffled, 0.0, 4.0)  # squared distances of unit vectors lie in [0, 4]
        draws[k] = _group_accuracies(dist, issame, folds, masks, mode)

    acc_ref = np.array([ref.per_group[g]["accuracy"] for g in order])
    acc_obs = np.array([other.per_group[g]["accuracy"] for g in order])
    per_group: dict[str, dict[str, Any]] = {}
    for g, name in enumerate(order):
        lo, hi = percentile_interval(draws[:, g])
        expected = float(draws[:, g].mean())
        per_group[name] = {"reference": float(acc_ref[g]), "observed": float(acc_obs[g]), "expected": expected,
                           "interval": [float(lo), float(hi)], "excess_error_pp": expected - float(acc_obs[g]),
                           "p": _p_two_sided(draws[:, g], float(acc_obs[g]))}
    ps = [per_group[g]["p"] for g in order]
    if all(np.isfinite(ps)):
        for name, p in zip(order, holm(ps)):
            per_group[name]["p_holm"] = float(p)

    s_draws = summary_arrays(draws, ddof)
    s_ref, s_obs = summary_arrays(acc_ref, ddof), summary_arrays(acc_obs, ddof)
    metrics: dict[str, dict[str, Any]] = {}
    for key in METRICS:
        d = s_draws[key]
        fin = d[np.isfinite(d)]
        entry: dict[str, Any] = {"reference": float(s_ref[key]), "observed": float(s_obs[key]),
                                 "expected": float(fin.mean()) if fin.size else float("nan"),
                                 "p": _p_two_sided(d, float(s_obs[key]))}
        entry["interval"] = [float(v) for v in percentile_interval(fin)] if fin.size else [float("nan")] * 2
        if fin.size < d.size:
            entry["non_finite_draws"] = int(d.size - fin.size)
        metrics[key] = entry
    return {"n_draws": int(n_draws), "seed": int(seed), "n_bins": int(n_bins),
            "exchanged": "residuals of a cubic trend in the reference distance per pair kind plus a shift per "
                         "group, among pairs of one kind (genuine / impostor) and distance decile",
            "mean_abs_score_change": float(np.mean(np.abs(po.score - pr.score))),
            "per_group": per_group, "metrics": metrics}
