"""All evaluation metrics of one model on one benchmark, from per-pair distances (pure numpy).

``evaluate_arrays`` is the core that ``qfair.eval.evaluate`` calls after embedding; it needs no
model, so published scores or saved distances can be evaluated too.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..utils.errors import DataError
from .bootstrap import Resampler, check_pair_ids, ratio
from .fairness import check_alpha, fairness_summary, fdr, garbe, inequity_rate, summary_arrays
from .rates import auc, eer, fnmr_at_fmr, rates_at, threshold_at_fmr
from .result import EvalResult, PairData
from .stats import accuracy_interval, percentile_interval
from .verification import contiguous_folds, kfold_predictions


def group_order(groups: np.ndarray, wanted: Sequence[str] | None = None, benchmark: str = "benchmark") -> list[str]:
    """Groups in order of first appearance, or ``wanted`` (each named once, each must have pairs)."""
    present = list(dict.fromkeys(np.asarray(groups).tolist()))
    if wanted is None:
        return present
    wanted = [str(g) for g in wanted]
    twice = list(dict.fromkeys(g for g in wanted if wanted.count(g) > 1))
    if twice:
        raise DataError(f"{benchmark}: the groups to evaluate name {', '.join(map(repr, twice))} more than once; "
                        f"name each group once (--groups / groups=[...]), e.g. {' '.join(dict.fromkeys(wanted))}")
    missing = [g for g in wanted if g not in present]
    if missing:
        raise DataError(f"{benchmark}: group(s) {', '.join(map(repr, missing))} have no pairs in this benchmark; "
                        f"groups with pairs: {', '.join(present) or 'none'}")
    return wanted


def _ci(samples: np.ndarray) -> list[float]:
    lo, hi = percentile_interval(samples)
    return [float(lo), float(hi)]


def _fold_labels(folds: Any, n_pairs: int, benchmark: str) -> np.ndarray:
    """``folds`` as int64 labels, one per pair, else DataError naming ``benchmark``."""
    f = np.asarray(folds)
    if f.ndim != 1 or len(f) != n_pairs:
        raise DataError(f"{benchmark}: folds must hold one fold label per pair ({n_pairs} pairs), got shape "
                        f"{f.shape}; pass folds in pair order, or folds=None for n_folds contiguous folds per group")
    if f.dtype.kind in "iub":
        return f.astype(np.int64)
    if f.dtype.kind == "f" and np.all(np.isfinite(f)) and np.all(f == np.round(f)):
        return f.astype(np.int64)
    raise DataError(f"{benchmark}: fold labels must be integers, got {f.dtype} values such as {f[:3].tolist()}; "
                    f"number the folds 0, 1, ...")


def _check_finite(dist: np.ndarray, groups: np.ndarray, keep: np.ndarray, benchmark: str) -> None:
    """Every distance of a pair evaluated (``keep``) is finite, else DataError naming the first pairs (their
    indices in the arrays given) and their groups."""
    bad = np.flatnonzero(keep & ~np.isfinite(dist))
    if len(bad):
        first = bad[:10].tolist()
        where = ", ".join(f"{i} ({groups[i]})" for i in first) + (", ..." if len(bad) > 10 else "")
        raise DataError(f"{benchmark}: {len(bad)} of {int(keep.sum())} pairs have a non-finite distance (nan/inf); "
                        f"pairs (index in the arrays given, group): {where}. Check the embeddings or scores of "
                        f"these pairs (e.g. a model that outputs NaN), or leave them out")


def check_layout(issame: np.ndarray, groups: np.ndarray, folds: np.ndarray | None = None, *,
                 benchmark: str = "benchmark", n_folds: int = 10, threshold: float | None = None,
                 groups_wanted: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Check that pairs ``issame`` (P,) of ``groups`` (P,) can be evaluated, before any embedding is
    computed: each group evaluated has pairs in at least 2 folds, and without an inherited ``threshold``
    there are impostor pairs. Returns the group order, the mask of pairs kept (``groups_wanted``) and
    the fold of each kept pair (``folds`` as given, else ``n_folds`` contiguous folds per group)."""
    issame = np.asarray(issame, dtype=bool)
    groups = np.asarray(groups, dtype=str)
    if issame.ndim != 1 or groups.shape != issame.shape:
        raise DataError(f"{benchmark}: {issame.shape} pair labels but {groups.shape} group names; give one label "
                        f"and one group name per pair")
    if folds is not None:
        folds = _fold_labels(folds, len(issame), benchmark)
    order = group_order(groups, groups_wanted, benchmark)
    keep = np.isin(groups, order)
    issame, groups = issame[keep], groups[keep]
    codes = _codes(groups, order)
    sizes = np.bincount(codes, minlength=len(order))
    own_folds = folds is not None
    if not own_folds:  # n_folds contiguous folds per group: a group needs at least n_folds pairs
        small = [(gname, int(sizes[g]), f"fewer than the {n_folds} folds")
                 for g, gname in enumerate(order) if sizes[g] < max(2, n_folds)]
    else:
        folds = folds[keep]
        small = [(gname, int(sizes[g]), f"in {len(np.unique(folds[codes == g]))} fold(s)")
                 for g, gname in enumerate(order) if sizes[g] < 2 or len(np.unique(folds[codes == g])) < 2]
    if small:
        what = "; ".join(f"group '{g}' has {n} pair(s), {why}" for g, n, why in small)
        others = [g for g in order if g not in {s[0] for s in small}]
        fewer = min(n for _, n, _ in small)
        folds_hint = "" if own_folds or fewer < 2 else f", or use at most {fewer} folds (--n-folds {fewer})"
        hint = (f" Leave {'it' if len(small) == 1 else 'them'} out with --groups {' '.join(others)} (Python: "
                f"groups=[...]){folds_hint}, or add pairs." if others else f" Add pairs{folds_hint}.")
        raise DataError(f"{benchmark}: {what}; k-fold verification needs pairs in at least 2 folds, and "
                        f"as many pairs as folds when the benchmark does not define its folds.{hint}")
    if folds is None:
        folds = np.zeros(len(groups), dtype=np.int64)
        for g in range(len(order)):
            folds[codes == g] = contiguous_folds(int(sizes[g]), n_folds)
    if threshold is None and issame.all():
        raise DataError(f"{benchmark}: no impostor pairs, cannot choose a threshold at a target FMR. Add "
                        f"impostor (different-identity) pairs, or inherit a reference model's threshold.")
    return order, keep, folds


def evaluate_arrays(dist: np.ndarray, issame: np.ndarray, groups: np.ndarray, *,
                    pair_ids: np.ndarray | None = None, folds: np.ndarray | None = None,
                    name: str = "model", benchmark: str = "benchmark", meta: dict | None = None,
                    mode: str = "exact", n_folds: int = 10, target_fmr: float = 1e-3,
                    threshold: float | None = None, alpha: float = 0.5, ddof: int = 1,
                    n_bootstrap: int = 1000, seed: int = 0, groups_wanted: Sequence[str] | None = None
                    ) -> EvalResult:
    """Evaluate per-pair squared L2 distances of unit embeddings ``dist`` (P,) with labels ``issame``,
    group names ``groups`` (P,), optional identities ``pair_ids`` (P, 2) and fold labels ``folds``.

    ``threshold`` (cosine similarity) is inherited from a reference model; otherwise it is chosen on
    the pooled impostor scores at ``target_fmr``. IR is ``inf`` where a group has FMR or FNMR 0 and another
    does not; such resamples stay in ``ir_ci`` (its upper bound is then ``inf``), undefined ones (0 / 0) are
    left out and counted in ``rate_fairness["ir_undefined_resamples"]``.
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    groups = np.asarray(groups, dtype=str)
    n = len(dist)
    if n == 0:
        raise DataError(f"{benchmark}: no pairs to evaluate")
    if dist.ndim != 1 or len(issame) != n or len(groups) != n:
        raise DataError(f"{benchmark}: {dist.shape} distances, {len(issame)} labels, {len(groups)} group names; "
                        f"give one distance, label and group name per pair")
    alpha = check_alpha(alpha, benchmark)
    pair_ids = check_pair_ids(pair_ids, n, benchmark)
    folds_given = folds
    order, keep, folds = check_layout(issame, groups, folds, benchmark=benchmark, n_folds=n_folds,
                                      threshold=threshold, groups_wanted=groups_wanted)
    _check_finite(dist, groups, keep, benchmark)
    if not keep.all():  # evaluate only the wanted groups
        dist, issame, groups = dist[keep], issame[keep], groups[keep]
        pair_ids = None if pair_ids is None else pair_ids[keep]
    codes = _codes(groups, order)
    score = 1.0 - dist / 2.0  # cosine similarity of unit embeddings: d^2 = 2 - 2 cos
    notes: list[str] = []

    # 1. per-group k-fold accuracy
    correct = np.zeros(len(dist), dtype=bool)
    per_group: dict[str, dict[str, Any]] = {}
    for g, gname in enumerate(order):
        m = codes == g
        ok, thr, acc = kfold_predictions(dist[m], issame[m], folds[m], mode)  # type: ignore[arg-type]
        correct[m] = ok
        lo, hi, how = accuracy_interval(int(ok.sum()), int(m.sum()))
        per_group[gname] = {
            "n_pairs": int(m.sum()), "n_genuine": int(issame[m].sum()), "n_impostor": int((~issame[m]).sum()),
            "accuracy": float(np.mean(acc) * 100.0), "accuracy_fold_std": float(np.std(acc) * 100.0),
            "n_errors": int((~ok).sum()), "accuracy_ci": [lo, hi], "accuracy_ci_method": how,
            "fold_thresholds_dist": thr.tolist(),
        }
        if how.startswith(("rule of three", "exact one-sided")):
            notes.append(f"group '{gname}': {how}; its accuracy interval is [{lo:.2f}, {hi:.2f}]")
    overall: dict[str, Any] = {"n_pairs": int(len(dist))}
    if len(order) > 1 and len(np.unique(folds)) > 1:
        _, _, acc_all = kfold_predictions(dist, issame, folds, mode)  # type: ignore[arg-type]
        overall.update(accuracy=float(np.mean(acc_all) * 100), accuracy_fold_std=float(np.std(acc_all) * 100))
    else:
        overall.update(accuracy=per_group[order[0]]["accuracy"],
                       accuracy_fold_std=per_group[order[0]]["accuracy_fold_std"])

    # 2. one global threshold: per-group FMR / FNMR and the rate-based fairness measures
    if threshold is None:
        t = threshold_at_fmr(score[~issame], target_fmr)
        thr_info = {"value": t, "source": "pooled impostor scores", "target_fmr": target_fmr, "score": "cosine"}
    else:
        t = float(threshold)
        thr_info = {"value": t, "source": "inherited", "target_fmr": target_fmr, "score": "cosine"}
    thr_info["pooled_fmr"], thr_info["pooled_fnmr"] = rates_at(score, issame, t)
    fmr = np.zeros(len(order))
    fnmr = np.zeros(len(order))
    for g, gname in enumerate(order):
        m = codes == g
        fmr[g], fnmr[g] = rates_at(score[m], issame[m], t)
        pg = per_group[gname]
        pg.update(fmr=float(fmr[g]), fnmr=float(fnmr[g]), fnmr_at_fmr=fnmr_at_fmr(score[m], issame[m], target_fmr),
                  eer=eer(score[m], issame[m]), auc=auc(score[m], issame[m]))
        if pg["n_genuine"] == 0 or pg["n_impostor"] == 0:
            notes.append(f"group '{gname}' has no {'genuine' if pg['n_genuine'] == 0 else 'impostor'} pairs: "
                         f"its FMR/FNMR/EER/AUC are undefined (nan)")
    rate_fair = {"alpha": alpha, "fdr": float(fdr(fmr, fnmr, alpha)),
                 "ir": float(inequity_rate(fmr, fnmr, alpha)), "garbe": float(garbe(fmr, fnmr, alpha))}
    ir_note = _ir_note(fmr, fnmr, order, alpha)
    if ir_note:
        notes.append(ir_note)
    if not np.isfinite(rate_fair["garbe"]) and np.isfinite(fmr).all() and np.isfinite(fnmr).all():
        zero = " and ".join(k for k, v in (("FMR", fmr), ("FNMR", fnmr)) if len(v) > 1 and not v.any())
        notes.append(f"GARBE undefined: {'every group has ' + zero + ' 0' if zero else 'a single group'} at the "
                     f"global threshold (the Gini coefficient divides by the mean rate)")

    # 3. fairness of the accuracies
    accs = {gname: per_group[gname]["accuracy"] for gname in order}
    summary = fairness_summary(accs, ddof=ddof, n_pairs={k: per_group[k]["n_pairs"] for k in order})
    if summary.note:
        notes.append(summary.note)

    # 4. bootstrap: thresholds (fold and global) fixed, pairs/identities resampled
    boot: dict[str, Any] = {"n": int(n_bootstrap), "seed": seed}
    fairness_ci: dict[str, list[float]] = {}
    if n_bootstrap > 0:
        rs = Resampler(codes, len(order), pair_ids, n_bootstrap, seed)
        boot.update(method=rs.method, note=rs.note + "; fold thresholds and the global threshold are held fixed")
        if rs.method == "pair":
            notes.append(rs.note)
        gen, imp = issame.astype(float), (~issame).astype(float)
        X = np.stack([np.ones(len(dist)), correct, gen, gen * (score < t), imp, imp * (score >= t)], axis=1)
        S = rs.group_sums(X)  # (B, G, 6)
        acc_b = 100.0 * ratio(S[..., 1], S[..., 0])
        fnmr_b, fmr_b = ratio(S[..., 3], S[..., 2]), ratio(S[..., 5], S[..., 4])
        for g, gname in enumerate(order):
            per_group[gname].update(accuracy_ci_bootstrap=_ci(acc_b[:, g]), fmr_ci=_ci(fmr_b[:, g]),
                                    fnmr_ci=_ci(fnmr_b[:, g]))
        for k, v in summary_arrays(acc_b, ddof).items():
            fairness_ci[k] = _ci(v)
        ir_b = inequity_rate(fmr_b, fnmr_b, alpha)
        rate_fair.update(fdr_ci=_ci(fdr(fmr_b, fnmr_b, alpha)), ir_ci=_ci(ir_b),
                         garbe_ci=_ci(garbe(fmr_b, fnmr_b, alpha)), ir_undefined_resamples=int(np.isnan(ir_b).sum()))
        if np.isfinite(rate_fair["ir"]) and not np.isfinite(ir_b).all():  # the interval is around a defined IR
            notes.append(_ir_boot_note(ir_b))
    settings = {"mode": mode, "n_folds": n_folds, "target_fmr": target_fmr, "alpha": alpha, "ddof": ddof,
                "n_bootstrap": n_bootstrap, "seed": seed,
                # n_folds applies only to a benchmark without folds of its own (RFW and builtin have them)
                "folds": f"{n_folds} contiguous per group" if folds_given is None else "the benchmark's own"}
    pairs = PairData(dist=dist, score=score, issame=issame, groups=groups,
                     pair_ids=None if pair_ids is None else np.asarray(pair_ids, dtype=str), folds=folds,
                     correct=correct)
    return EvalResult(name=name, benchmark=benchmark, groups=order, per_group=per_group, overall=overall,
                      fairness=summary, fairness_ci=fairness_ci, threshold=thr_info, rate_fairness=rate_fair,
                      bootstrap=boot, settings=settings, meta=dict(meta or {}), notes=notes, pairs=pairs)


def with_threshold(result: EvalResult, threshold: float) -> EvalResult:
    """``result`` evaluated again from its per-pair data at an inherited global ``threshold`` (cosine), with
    the same settings, groups and folds; no embedding is recomputed. Notes that did not come from the
    metrics (e.g. on the model file) are kept."""
    p = result.pairs
    if p is None:
        raise DataError(f"'{result.name}': re-evaluating at another threshold needs the per-pair data "
                        f"(EvalResult.pairs); results loaded from metrics.json do not have it")
    s = result.settings
    new = evaluate_arrays(p.dist, p.issame, p.groups, pair_ids=p.pair_ids, folds=p.folds, name=result.name,
                          benchmark=result.benchmark, meta=result.meta, mode=s["mode"], n_folds=s["n_folds"],
                          target_fmr=s["target_fmr"], threshold=threshold, alpha=s["alpha"], ddof=s["ddof"],
                          n_bootstrap=s["n_bootstrap"], seed=s["seed"], groups_wanted=result.groups)
    if "folds" in s:
        new.settings["folds"] = s["folds"]  # the folds were passed back explicitly; keep how they were made
    if result.meta.get("target_note"):
        new.notes.insert(0, str(result.meta["target_note"]))
    return new


def _ir_note(fmr: np.ndarray, fnmr: np.ndarray, order: list[str], alpha: float) -> str:
    """Why IR at the global threshold is infinite or undefined ('' when it is finite)."""
    ir = float(inequity_rate(fmr, fnmr, alpha))
    if np.isfinite(ir):
        return ""
    rates = (("FMR", fmr), ("FNMR", fnmr))
    if np.isinf(ir):
        zero = "; ".join(f"{what} 0 in group(s) {', '.join(repr(order[g]) for g in np.flatnonzero(r == 0))}"
                         for what, r in rates if (r == 0).any() and (r > 0).any())
        return f"IR infinite: {zero} while another group's is above 0 at the global threshold (max / min divides by 0)"
    why = [f"{what} is 0 in every group (0 / 0)" for what, r in rates if not (r != 0).any()]
    why += [f"{what} of group(s) {', '.join(repr(order[g]) for g in np.flatnonzero(np.isnan(r)))} is undefined "
            f"(no {'impostor' if what == 'FMR' else 'genuine'} pairs)" for what, r in rates if np.isnan(r).any()]
    return f"IR undefined: {'; '.join(why)} at the global threshold"


def _ir_boot_note(ir_b: np.ndarray) -> str:
    """How many bootstrap resamples gave an infinite or undefined IR (the interval keeps inf, drops NaN)."""
    n_inf, n_nan = int(np.isinf(ir_b).sum()), int(np.isnan(ir_b).sum())
    parts = []
    if n_inf:
        parts.append(f"{n_inf} of {len(ir_b)} bootstrap resamples give an infinite IR (a group with FMR or FNMR 0 "
                     f"there), kept in its interval")
    if n_nan:
        parts.append(f"{n_nan} of {len(ir_b)} resamples give an undefined IR (0 / 0, or a group without pairs of a "
                     f"kind), left out of its interval (rate_fairness['ir_undefined_resamples'])")
    return "; ".join(parts)


def _codes(groups: np.ndarray, order: list[str]) -> np.ndarray:
    """Index of each pair's group in ``order`` (P,) int."""
    lookup = {g: i for i, g in enumerate(order)}
    return np.fromiter((lookup[g] for g in groups.tolist()), dtype=np.int64, count=len(groups))
