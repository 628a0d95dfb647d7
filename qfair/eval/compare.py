"""Paired comparison of models evaluated on the same pairs (README references [2]): "did this
compression make the model more biased, and is that significant?"

Per group: McNemar's test on the k-fold decisions (b = reference right & other wrong, c = the
reverse), Holm-corrected across groups, and the error delta. Across groups: change in AVG, STD and
SER with paired bootstrap intervals (the same identity resamples applied to both models), the
FMR drift of the other model at the reference model's global threshold, and the group-blind
permutation null (:mod:`.null`): the per-group accuracies and AVG / STD / SER that change of the
same size, blind to the group, would give -- the yardstick for "fairer" or "more biased".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..utils.errors import DataError
from .bootstrap import Resampler, ratio
from .fairness import summary_arrays
from .metrics import _codes
from .null import group_blind_null
from .rates import rates_at
from .result import EvalResult
from .stats import holm, mcnemar, percentile_interval, significance_mark


@dataclass
class PairedComparison:
    """``other`` against ``reference`` on one benchmark. Deltas are other - reference."""

    reference: str
    other: str
    benchmark: str
    per_group: dict[str, dict[str, Any]]
    deltas: dict[str, dict[str, Any]]
    fmr_drift: dict[str, Any]
    bootstrap: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    null: dict[str, Any] | None = None  # group-blind permutation null (qfair.eval.null), None when not drawn

    def __repr__(self) -> str:
        """One line: the McNemar p-values (Holm) per group and the STD / SER change (``to_dict`` has everything)."""
        groups = ", ".join(f"{g} p={d['p_holm']:.3g}{d['mark']}" for g, d in self.per_group.items())
        deltas = ", ".join(f"d{k.upper()} {self.deltas[k]['delta']:+.2f}" for k in ("avg", "std", "ser")
                           if k in self.deltas)
        return f"PairedComparison({self.other!r} vs {self.reference!r} on {self.benchmark!r}: {groups}; {deltas})"

    def marks(self) -> dict[str, str]:
        """Group -> significance mark of the Holm-adjusted McNemar p-value ('' if not significant)."""
        return {g: d["mark"] for g, d in self.per_group.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "other": self.other, "benchmark": self.benchmark,
                "per_group": self.per_group, "deltas": self.deltas, "fmr_drift": self.fmr_drift,
                "bootstrap": self.bootstrap, "notes": list(self.notes), "null": self.null}


def _check_same_pairs(ref: EvalResult, other: EvalResult) -> None:
    if ref.pairs is None or other.pairs is None:
        raise DataError("paired comparison needs the per-pair data of both results (EvalResult.pairs); "
                        "results loaded from metrics.json cannot be compared pair by pair")
    if ref.benchmark != other.benchmark:
        raise DataError(f"'{other.name}' ({other.benchmark}) and '{ref.name}' ({ref.benchmark}) were evaluated on "
                        f"different benchmarks; a paired comparison needs both on the same benchmark")
    if ref.groups != other.groups:
        raise DataError(f"'{other.name}' and '{ref.name}' report different groups: {other.groups} vs {ref.groups}; "
                        f"evaluate both with the same groups (--groups / groups=[...])")
    _check_same_settings(ref, other)  # a different setting (e.g. the folds) is named before the pairs are compared
    if ref.pairs.fingerprint() != other.pairs.fingerprint():
        raise DataError(f"'{other.name}' and '{ref.name}' ({ref.benchmark}) were not evaluated on the same pairs "
                        f"(labels, groups, folds or identities differ); a paired comparison needs the same pair list")


# what changes the k-fold decisions (mode), the fairness numbers (ddof: STD; alpha: FDR / IR / GARBE; target_fmr:
# the global threshold and FNMR@FMR), the folds (n_folds contiguous folds per group, or the benchmark's own) or the
# scores themselves (flip: test-time flip, recorded in meta by evaluate); n_bootstrap and seed change only the
# intervals (the comparison draws its own, with the reference's)
_SETTINGS = ("mode", "ddof", "alpha", "target_fmr")


def _threshold_policy(r: EvalResult) -> str:
    t = r.threshold or {}
    if t.get("source") == "inherited":
        return f"inherited threshold {t.get('value')!r}"
    return f"threshold at target FMR {t.get('target_fmr')!r} of its own impostor scores"


def _check_same_settings(ref: EvalResult, other: EvalResult) -> None:
    """Both results must come from the same evaluation settings: a pair decided right under one threshold
    search and wrong under the other would count as discordant, and the deltas would mix two definitions."""
    diff = [f"{k} {other.settings[k]!r} vs {ref.settings[k]!r}" for k in _SETTINGS
            if k in other.settings and k in ref.settings and other.settings[k] != ref.settings[k]]
    diff += _folds_difference(ref, other)
    if "flip" in other.meta and "flip" in ref.meta and bool(other.meta["flip"]) != bool(ref.meta["flip"]):
        diff.append(f"flip {other.meta['flip']!r} vs {ref.meta['flip']!r}")
    # the reference's own threshold, or the other evaluated at it (--inherit-threshold / threshold=), is one policy
    t_ref, t_oth = (ref.threshold or {}).get("value"), (other.threshold or {}).get("value")
    inherited = "inherited" in ((ref.threshold or {}).get("source"), (other.threshold or {}).get("source"))
    if inherited and t_ref != t_oth:
        diff.append(f"threshold policy: {_threshold_policy(other)} vs {_threshold_policy(ref)}")
    if diff:
        raise DataError(f"'{other.name}' and '{ref.name}' were evaluated with different settings ({other.name} vs "
                        f"{ref.name}: {'; '.join(diff)}); a paired comparison needs both evaluated the same way: "
                        "evaluate both with the same settings (mode, ddof, alpha, target_fmr, n_folds / folds, flip, "
                        "and threshold= the reference's threshold or neither)")


def _folds_difference(ref: EvalResult, other: EvalResult) -> list[str]:
    """How the folds of the two results were made, when they differ (n_folds contiguous folds per group, or the
    benchmark's own); folds described differently but equal pair by pair are no difference."""
    f_ref, f_oth = ref.settings.get("folds"), other.settings.get("folds")
    if f_ref is None or f_oth is None or f_ref == f_oth:
        return []
    if ref.pairs is not None and other.pairs is not None and np.array_equal(ref.pairs.folds, other.pairs.folds):
        return []
    n_oth, n_ref = other.settings.get("n_folds"), ref.settings.get("n_folds")
    return [f"folds {f_oth!r} vs {f_ref!r} (n_folds {n_oth!r} vs {n_ref!r})"]


def compare_pair(ref: EvalResult, other: EvalResult, *, n_bootstrap: int | None = None, seed: int | None = None,
                 exact_below: int = 25, null_draws: int = 200) -> PairedComparison:
    """Compare ``other`` to ``ref`` (both from ``evaluate`` on the same benchmark).

    ``null_draws``: permutations of the group-blind null (0 = skip it); about 15 ms each per 12k pairs.
    """
    for what, r in (("ref", ref), ("other", other)):
        if not isinstance(r, EvalResult):
            raise DataError(f"compare_pair: {what} must be an EvalResult from qfair.eval.evaluate, got "
                            f"{type(r).__name__}")
    _check_same_pairs(ref, other)
    pr, po = ref.pairs, other.pairs
    assert pr is not None and po is not None
    order = ref.groups
    codes = _codes(pr.groups, order)
    notes: list[str] = []
    per_group: dict[str, dict[str, Any]] = {}
    for g, gname in enumerate(order):
        m = codes == g
        b = int(np.count_nonzero(pr.correct[m] & ~po.correct[m]))
        c = int(np.count_nonzero(~pr.correct[m] & po.correct[m]))
        test = mcnemar(b, c, exact_below)
        per_group[gname] = {
            "b": b, "c": c, "statistic": test.statistic, "p_value": test.p_value, "method": test.method,
            "accuracy_ref": ref.per_group[gname]["accuracy"], "accuracy_other": other.per_group[gname]["accuracy"],
            "error_delta_pp": float(100.0 * (np.mean(~po.correct[m]) - np.mean(~pr.correct[m]))),
        }
    p_adj = holm([per_group[g]["p_value"] for g in order])
    for gname, p in zip(order, p_adj):
        per_group[gname]["p_holm"] = float(p)
        per_group[gname]["mark"] = significance_mark(float(p))

    # FMR drift at the reference threshold (the operating point a deployment would keep)
    t = float(ref.threshold["value"])
    drift: dict[str, Any] = {"threshold": t, "threshold_source": f"reference '{ref.name}'", "per_group": {}}
    for g, gname in enumerate(order):
        m = codes == g
        f_ref, n_ref = rates_at(pr.score[m], pr.issame[m], t)
        f_oth, n_oth = rates_at(po.score[m], po.issame[m], t)
        drift["per_group"][gname] = {"fmr_ref": f_ref, "fmr_other": f_oth, "fmr_delta": f_oth - f_ref,
                                     "fmr_ratio": f_oth / f_ref if f_ref > 0 else float("nan"),
                                     "fnmr_ref": n_ref, "fnmr_other": n_oth}
    f_ref, _ = rates_at(pr.score, pr.issame, t)
    f_oth, _ = rates_at(po.score, po.issame, t)
    drift.update(pooled_fmr_ref=f_ref, pooled_fmr_other=f_oth)

    # paired bootstrap: identical weights for both models because both columns share one pass
    ddof = int(ref.settings.get("ddof", 1))
    d_ref = summary_arrays(np.array(list(ref.accuracies().values())), ddof)
    d_oth = summary_arrays(np.array(list(other.accuracies().values())), ddof)
    deltas: dict[str, dict[str, Any]] = {}
    for k in ("avg", "std", "ser", "gap"):
        a, b_ = float(d_ref[k]), float(d_oth[k])
        deltas[k] = {"reference": a, "other": b_, "delta": b_ - a if np.isfinite(a) and np.isfinite(b_) else
                     float("nan")}
    nb = int(ref.settings.get("n_bootstrap", 1000) if n_bootstrap is None else n_bootstrap)
    sd = int(ref.settings.get("seed", 0) if seed is None else seed)
    boot: dict[str, Any] = {"n": nb, "seed": sd}
    if nb > 0:
        rs = Resampler(codes, len(order), pr.pair_ids, nb, sd)
        boot.update(method=rs.method, note=rs.note)
        if rs.method == "pair":
            notes.append(rs.note)
        imp = (~pr.issame).astype(float)
        X = np.stack([np.ones(len(codes)), pr.correct, po.correct, imp, imp * (pr.score >= t),
                      imp * (po.score >= t)], axis=1)
        S = rs.group_sums(X)
        acc_r, acc_o = 100 * ratio(S[..., 1], S[..., 0]), 100 * ratio(S[..., 2], S[..., 0])
        sr, so = summary_arrays(acc_r, ddof), summary_arrays(acc_o, ddof)
        for k in deltas:
            deltas[k].update(_delta_interval(sr[k], so[k], deltas[k]["delta"]))
        err_d = (acc_r - acc_o)  # error delta in pp = accuracy drop
        fmr_d = ratio(S[..., 5], S[..., 3]) - ratio(S[..., 4], S[..., 3])
        for g, gname in enumerate(order):
            lo, hi = percentile_interval(err_d[:, g])
            per_group[gname]["error_delta_ci"] = [float(lo), float(hi)]
            lo, hi = percentile_interval(fmr_d[:, g])
            drift["per_group"][gname]["fmr_delta_ci"] = [float(lo), float(hi)]
    if not np.isfinite(deltas["ser"]["delta"]):
        notes.append("SER change undefined: a model has an infinite or undefined SER (a group without errors)")
    null = group_blind_null(ref, other, n_draws=null_draws, seed=sd, ddof=ddof) if null_draws > 0 else None
    return PairedComparison(reference=ref.name, other=other.name, benchmark=ref.benchmark, per_group=per_group,
                            deltas=deltas, fmr_drift=drift, bootstrap=boot, notes=notes, null=null)


def _delta_interval(ref_b: np.ndarray, oth_b: np.ndarray, delta: float) -> dict[str, Any]:
    """Paired bootstrap interval of other - reference from the resampled values of both models.

    An undefined point change (an infinite or undefined value in either model) gets no interval and no
    significance claim: ``delta_ci`` NaN, ``excludes_zero`` False. Otherwise resamples where the change is
    undefined (inf - inf) are left out of the interval and counted in ``undefined_resamples``.
    """
    with np.errstate(invalid="ignore"):
        diff = oth_b - ref_b
    n_undef = int(np.isnan(diff).sum())
    if not np.isfinite(delta):
        return {"delta_ci": [float("nan"), float("nan")], "excludes_zero": False, "undefined_resamples": n_undef}
    lo, hi = (float(v) for v in percentile_interval(diff))
    return {"delta_ci": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0), "undefined_resamples": n_undef}


def _pick_reference(results: Sequence[EvalResult], reference: EvalResult | str | int | None) -> EvalResult:
    if isinstance(reference, EvalResult):
        return reference
    if isinstance(reference, int):
        if not -len(results) <= reference < len(results):
            raise DataError(f"reference index {reference} is out of range: there are {len(results)} results")
        return results[reference]
    if isinstance(reference, str):
        for r in results:
            if r.name == reference:
                return r
        raise DataError(f"reference '{reference}' is not among the results: {', '.join(r.name for r in results)}")
    for r in results:  # default: the first float model, else the first result
        if not r.meta.get("quantized"):
            return r
    return results[0]


def compare(*results: EvalResult, reference: EvalResult | str | int | None = None,
            **kwargs: Any) -> list[PairedComparison]:
    """Compare every result with the reference (default: the first float model) on the same benchmark.

    Results may come from several benchmarks: each is compared with the reference of its benchmark.
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    if len(results) < 2:
        got = f"only '{results[0].name}'" if results and isinstance(results[0], EvalResult) else "none"
        raise DataError(f"compare needs the reference and at least one result to compare with it; got {got}. "
                        f"Pass every result, e.g. compare(float_result, quantized_result, ...)")
    bad = [f"#{i} ({type(r).__name__})" for i, r in enumerate(results) if not isinstance(r, EvalResult)]
    if bad:
        raise DataError(f"compare takes EvalResult objects from qfair.eval.evaluate(model, benchmark), not models "
                        f"or paths; got {', '.join(bad[:4])}")
    ref_name = _pick_reference(results, reference).name
    out = []
    for bench in dict.fromkeys(r.benchmark for r in results):
        group = [r for r in results if r.benchmark == bench]
        names = [r.name for r in group]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # rows, marks and the reference are matched by name: a shared name mixes them up
            raise DataError(f"benchmark '{bench}': several results are named {', '.join(map(repr, twice))}; give "
                            f"each model its own name, e.g. evaluate(model, benchmark, name='w8a8-real')")
        ref = next((r for r in group if r.name == ref_name), None)
        if ref is None:
            raise DataError(f"benchmark '{bench}' has no result of the reference model '{ref_name}'")
        for r in group:  # every mismatch before any bootstrap is drawn
            if r is not ref:
                _check_same_settings(ref, r)
        out += [compare_pair(ref, r, **kwargs) for r in group if r is not ref]
    return out
