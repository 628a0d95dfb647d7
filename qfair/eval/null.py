"""Group-blind permutation null: is a model's change in per-group accuracy, STD or SER more than the
noise of its size would give?

Any perturbation of a model's pair scores, even one that treats every group alike, moves the
per-group k-fold accuracies, and it moves SER by construction: the same added noise costs the
best group (few errors) a larger *relative* error increase than the worst one, so SER tends to
fall. A compressed model whose SER dropped is not necessarily fairer, and a fine-tuned one whose
SER did not come back is not necessarily less faithful. This module gives the yardstick.

Null hypothesis: the change from ``ref`` to ``other`` in each pair's distance does not depend on
the pair's group. Under it the observed changes are exchangeable across groups, so each draw
shuffles them among all pairs (separately for genuine and impostor pairs, whose changes differ),
adds them to the reference distances and re-runs the per-group k-fold protocol with the
reference's folds and threshold search. The draws give the per-group accuracies and AVG / STD /
SER expected from change of that size alone, with a 95% interval and a two-sided permutation
p-value for the observed values (Holm-corrected across groups).

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


def _p_two_sided(draws: np.ndarray, observed: float) -> float:
    """Permutation p-value of ``observed`` against ``draws`` (finite draws only), centred on their mean."""
    d = draws[np.isfinite(draws)]
    if not np.isfinite(observed) or d.size == 0:
        return float("nan")
    centre = d.mean()
    extreme = np.count_nonzero(np.abs(d - centre) >= abs(observed - centre) - 1e-12)
    return float((1 + extreme) / (1 + d.size))


def group_blind_null(ref: EvalResult, other: EvalResult, *, n_draws: int = 200, seed: int = 0,
                     ddof: int | None = None) -> dict[str, Any]:
    """Compare ``other``'s per-group accuracies and AVG / STD / SER with what group-blind change of the
    same size would give ``ref``. Both results must come from ``evaluate`` on the same pairs.

    Returns ``{"n_draws", "seed", "mean_abs_score_change", "per_group": {g: {...}}, "metrics": {k: {...}}}``;
    each entry has ``reference``, ``observed`` (the other model), ``expected`` (mean over draws),
    ``interval`` (2.5 / 97.5 percentiles of the draws) and ``p`` (two-sided permutation p-value; per
    group also ``p_holm`` and ``excess_error_pp`` = expected - observed accuracy, > 0 when the group lost
    more than group-blind change explains).
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
    strata = [np.flatnonzero(issame), np.flatnonzero(~issame)]
    rng = np.random.default_rng(seed)

    draws = np.empty((n_draws, len(order)))  # (K, G) accuracies under the null
    for k in range(n_draws):
        shuffled = np.empty_like(change)
        for idx in strata:  # exchange changes among pairs of the same kind, across groups
            shuffled[idx] = change[idx[rng.permutation(idx.size)]]
        dist = np.clip(base + shuffled, 0.0, 4.0)  # squared distances of unit vectors lie in [0, 4]
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
    return {"n_draws": int(n_draws), "seed": int(seed), "stratified_by": "genuine / impostor",
            "mean_abs_score_change": float(np.mean(np.abs(po.score - pr.score))),
            "per_group": per_group, "metrics": metrics}
