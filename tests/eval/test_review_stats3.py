"""Review fixes of the evaluator (third statistics review): infinite IR kept in its bootstrap interval, the exact
threshold search that calls nothing "same", input checks (pair_ids, folds, non-finite distances, duplicate
groups, alpha), the folds in a paired comparison's settings, no significance claim for an undefined change,
and the Wilson docstring vector. Expected values are computed by hand or by brute force."""
import math

import numpy as np
import pytest

from qfair.eval import compare_pair, evaluate_arrays, kfold_predictions
from qfair.eval.bootstrap import Resampler
from qfair.eval.compare import _delta_interval
from qfair.eval.fairness import fdr, garbe, inequity_rate
from qfair.eval.metrics import check_layout
from qfair.eval.stats import accuracy_interval, wilson_interval
from qfair.eval.verification import _best_exact, _best_grid, contiguous_folds
from qfair.utils.errors import ConfigError, DataError

from .conftest import make_pairs


def _order_interval(x, level=0.95):
    """Brute-force percentile interval: NaN left out, order statistics floor/ceil of q (n - 1), infinities kept."""
    s = np.sort(np.asarray(x, float)[~np.isnan(x)])
    a = (1 - level) / 2
    return s[math.floor(a * (len(s) - 1))], s[math.ceil((1 - a) * (len(s) - 1))]


def _ir_by_hand(fmr, fnmr, alpha=0.5):
    """IR of one resample, written out: a ratio is inf when its minimum is 0 and its maximum is not."""
    def ratio(r):
        lo, hi = min(r), max(r)
        if any(math.isnan(v) for v in r) or hi == 0:
            return math.nan
        return math.inf if lo == 0 else hi / lo
    rf, rn = ratio(fmr), ratio(fnmr)
    if alpha == 0:
        return rn
    if alpha == 1:
        return rf
    return rf ** alpha * rn ** (1 - alpha)


# ---------------------------------------------------------------- 1. IR infinite, kept in the interval

def test_inequity_rate_is_infinite_when_only_some_groups_have_rate_zero():
    assert float(inequity_rate([0.0, 0.01], [0.1, 0.2])) == math.inf
    assert math.isnan(float(inequity_rate([0.0, 0.0], [0.1, 0.2])))  # 0 / 0: every group has FMR 0
    assert math.isnan(float(inequity_rate([np.nan, 0.01], [0.1, 0.2])))  # a group without impostor pairs
    assert float(inequity_rate([0.0, 0.0], [0.1, 0.2], alpha=0.0)) == pytest.approx(2.0)  # FMR weighs nothing
    assert float(inequity_rate([0.01, 0.04], [0.0, 0.2], alpha=1.0)) == pytest.approx(4.0)
    batch = inequity_rate(np.array([[0.0, 0.01], [0.0, 0.0], [0.01, 0.02]]),
                          np.array([[0.1, 0.2], [0.1, 0.2], [0.1, 0.4]]))
    assert batch[0] == math.inf and math.isnan(batch[1]) and batch[2] == pytest.approx(math.sqrt(2 * 4))


def _two_groups_at_fixed_threshold():
    """Two groups of 300 genuine + 300 impostor pairs; at cosine 0.3 (distance 1.4) group A accepts 1 impostor
    and rejects 3 genuine pairs, group B 8 and 6: FMR 1/300, 8/300, FNMR 3/300, 6/300, IR sqrt(8 * 2) = 4."""
    dist, same, groups = [], [], []
    for g, n_fm, n_fnm in (("A", 1, 3), ("B", 8, 6)):
        s = np.arange(600) % 2 == 0
        gen = np.full(300, 0.8)
        gen[np.arange(n_fnm) * 50 + 7] = 1.6
        imp = np.full(300, 2.0)
        imp[np.arange(n_fm) * 30 + 11] = 1.2
        d = np.empty(600)
        d[s], d[~s] = gen, imp
        dist.append(d)
        same.append(s)
        groups += [g] * 600
    return np.concatenate(dist), np.concatenate(same), np.array(groups)


def test_ir_interval_keeps_infinite_resamples_instead_of_dropping_them():
    dist, same, groups = _two_groups_at_fixed_threshold()
    B, seed, t = 400, 3, 0.3
    r = evaluate_arrays(dist, same, groups, threshold=t, n_bootstrap=B, seed=seed, benchmark="bench")
    assert [r.per_group[g]["fmr"] for g in "AB"] == [pytest.approx(1 / 300), pytest.approx(8 / 300)]
    assert r.rate_fairness["ir"] == pytest.approx(4.0)
    # brute force: the pair bootstrap's draws (rng [seed, group], one (B, n) draw), rates and IR per resample
    score = 1 - dist / 2
    ir_b = []
    draws = {g: np.random.default_rng([seed, k]).integers(0, 600, size=(B, 600)) for k, g in enumerate("AB")}
    for b in range(B):
        fmr, fnmr = [], []
        for g in "AB":
            sel = np.flatnonzero(groups == g)[draws[g][b]]
            imp, gen = sel[~same[sel]], sel[same[sel]]
            fmr.append(np.mean(score[imp] >= t))
            fnmr.append(np.mean(score[gen] < t))
        ir_b.append(_ir_by_hand(fmr, fnmr))
    ir_b = np.array(ir_b)
    n_inf = int(np.isinf(ir_b).sum())
    assert n_inf > 0.025 * B  # group A loses its one false match in about (1 - 1/600)^600 = 37% of resamples
    assert r.rate_fairness["ir_ci"] == [pytest.approx(_order_interval(ir_b)[0]), math.inf]
    assert r.rate_fairness["ir_undefined_resamples"] == int(np.isnan(ir_b).sum())
    assert any(f"{n_inf} of {B} bootstrap resamples give an infinite IR" in n for n in r.notes)


def test_infinite_ir_point_is_named_as_infinite_with_its_group():
    dist, same, groups = _two_groups_at_fixed_threshold()
    a_imp = (groups == "A") & ~same
    dist = np.where(a_imp, 2.0, dist)  # group A accepts no impostor, B still 8
    r = evaluate_arrays(dist, same, groups, threshold=0.3, n_bootstrap=0, benchmark="bench")
    assert r.rate_fairness["ir"] == math.inf
    assert any(n.startswith("IR infinite: FMR 0 in group(s) 'A'") for n in r.notes), r.notes


def test_infinite_ir_interval_reaches_the_report_as_inf(tmp_path):
    from qfair.report import write_report

    dist, same, groups = _two_groups_at_fixed_threshold()
    r = evaluate_arrays(dist, same, groups, threshold=0.3, n_bootstrap=200, seed=3, name="m", benchmark="bench")
    assert r.rate_fairness["ir_ci"][1] == math.inf
    out = write_report(tmp_path, [r], figures=False)
    md = out["report.md"].read_text()
    assert f"IR 4.000 [{r.rate_fairness['ir_ci'][0]:.3f}, inf]" in md
    assert '"inf"' in out["metrics.json"].read_text()


# ---------------------------------------------------------------- 2. exact search that calls nothing "same"

def test_exact_search_calling_nothing_same_gives_minus_inf_like_the_grid_gives_0():
    d = np.array([0.5, 0.7, 1.0, 1.2])
    assert _best_exact(d, np.zeros(4, bool)) == -math.inf
    assert _best_grid(d, np.zeros(4, bool)) == 0.0
    # held-out impostor pairs closer than every training pair: the old threshold (the smallest training
    # distance) called them "same"; nothing is called "same" now, as in grid mode
    d = np.linspace(0.5, 3.5, 20)
    same = np.zeros(20, bool)
    folds = contiguous_folds(20, 10)
    for mode in ("exact", "grid"):
        correct, _, acc = kfold_predictions(d, same, folds, mode)
        assert correct.all() and np.all(acc == 1.0), mode


def _brute_exact(d, same, folds):
    """Held-out decisions with the best training threshold among -inf, midpoints and just above the largest,
    ties to the smallest."""
    correct = np.zeros(len(d), bool)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        u = np.unique(d[tr])
        mids = u[:-1] + (u[1:] - u[:-1]) / 2
        cands = np.concatenate(([-np.inf], mids, [np.nextafter(u[-1], np.inf)]))
        accs = [np.sum((d[tr] < c) == same[tr]) for c in cands]
        c = cands[int(np.argmax(accs))]
        correct[te] = (d[te] < c) == same[te]
    return correct


@pytest.mark.parametrize("seed", range(6))
def test_exact_equals_brute_force_when_impostors_dominate(seed):
    rng = np.random.default_rng(seed)
    n = 60
    same = rng.random(n) < 0.1  # mostly impostors: calling nothing "same" often wins on the training folds
    d = np.round(np.where(same, rng.normal(1.3, 0.4, n), rng.normal(1.5, 0.4, n)), 1)
    folds = contiguous_folds(n, 10)
    got, _, _ = kfold_predictions(d, same, folds, "exact")
    np.testing.assert_array_equal(got, _brute_exact(d, same, folds))


# ---------------------------------------------------------------- 3-5. input checks

@pytest.fixture(scope="module")
def small():
    dist, same, groups, ids = make_pairs(per_group=60, n_ids=10)
    return dist, same, groups, ids


@pytest.mark.parametrize("how", ["too_many", "too_few", "one_column", "three_columns"])
def test_pair_ids_must_be_one_row_of_two_per_pair(small, how):
    dist, same, groups, ids = small
    bad = {"too_many": np.concatenate([ids, ids]), "too_few": ids[:10], "one_column": ids[:, 0],
           "three_columns": np.concatenate([ids, ids[:, :1]], 1)}[how]
    with pytest.raises(DataError, match=r"^rfw-mini: pair_ids must have shape \(P, 2\) = \(240, 2\)") as exc:
        evaluate_arrays(dist, same, groups, pair_ids=bad, benchmark="rfw-mini", n_bootstrap=10)
    assert f"got shape {bad.shape}" in str(exc.value) and "pair_ids=None" in str(exc.value)
    with pytest.raises(DataError, match="pair_ids must have shape"):
        Resampler(np.zeros(len(dist), int), 1, bad, 5, 0)


def test_non_finite_distance_is_named_by_its_index_in_the_arrays_given_and_its_group(small):
    dist, same, groups, _ = small
    d = dist.copy()
    d[203], d[7] = np.nan, np.inf  # 203 is the 23rd pair of the 4th group
    with pytest.raises(DataError) as exc:
        evaluate_arrays(d, same, groups, benchmark="rfw-mini", n_bootstrap=0)
    msg = str(exc.value)
    assert msg.startswith("rfw-mini: 2 of 240 pairs have a non-finite distance")
    assert f"7 ({groups[7]}), 203 ({groups[203]})" in msg and "[3]" not in msg and "[23]" not in msg
    # a broken pair in a group left out is no reason to refuse the others
    wanted = [g for g in dict.fromkeys(groups) if g not in (groups[7], groups[203])]
    r = evaluate_arrays(d, same, groups, groups_wanted=wanted, n_bootstrap=0)
    assert r.groups == wanted


def test_folds_must_hold_one_integer_label_per_pair(small):
    dist, same, groups, _ = small
    folds = np.arange(len(dist)) % 5
    for bad in (np.append(folds, 0), folds[:-1], folds.reshape(-1, 2)):
        with pytest.raises(DataError, match=r"^rfw-mini: folds must hold one fold label per pair \(240 pairs\)"):
            evaluate_arrays(dist, same, groups, folds=bad, benchmark="rfw-mini", n_bootstrap=0)
        with pytest.raises(DataError, match="one fold label per pair"):
            check_layout(same, groups, bad, benchmark="rfw-mini")
    with pytest.raises(DataError, match="fold labels must be integers"):
        check_layout(same, groups, folds.astype(str), benchmark="rfw-mini")
    r_float = evaluate_arrays(dist, same, groups, folds=folds.astype(float), n_bootstrap=0)
    r_int = evaluate_arrays(dist, same, groups, folds=folds, n_bootstrap=0)
    assert r_float.accuracies() == r_int.accuracies()


def test_a_group_wanted_twice_is_its_own_error(small):
    dist, same, groups, _ = small
    g0, g1 = list(dict.fromkeys(groups))[:2]
    with pytest.raises(DataError, match=rf"^rfw-mini: the groups to evaluate name '{g0}' more than once") as exc:
        evaluate_arrays(dist, same, groups, groups_wanted=[g0, g1, g0], benchmark="rfw-mini", n_bootstrap=0)
    assert f"e.g. {g0} {g1}" in str(exc.value) and "fewer than" not in str(exc.value)


# ---------------------------------------------------------------- 7. alpha in [0, 1]

@pytest.mark.parametrize("alpha", [3.0, -0.1, float("nan"), "half"])
def test_alpha_outside_0_1_is_refused(small, alpha):
    dist, same, groups, _ = small
    with pytest.raises(ConfigError, match=r"^rfw-mini: alpha must be in \[0, 1\]"):
        evaluate_arrays(dist, same, groups, alpha=alpha, benchmark="rfw-mini", n_bootstrap=0)
    for fn in (fdr, inequity_rate, garbe):
        with pytest.raises(ConfigError, match="alpha must be in"):
            fn(np.array([0.1, 0.2]), np.array([0.1, 0.3]), alpha)


def test_alpha_at_the_ends_weighs_one_rate_only():
    fmr, fnmr = np.array([0.01, 0.03]), np.array([0.1, 0.4])
    assert float(fdr(fmr, fnmr, 1.0)) == pytest.approx(1 - 0.02)
    assert float(fdr(fmr, fnmr, 0.0)) == pytest.approx(1 - 0.3)
    assert float(inequity_rate(fmr, fnmr, 1.0)) == pytest.approx(3.0)
    assert float(inequity_rate(fmr, fnmr, 0.0)) == pytest.approx(4.0)


# ---------------------------------------------------------------- 6, 8. paired comparison

def _eval(name, noise=0.0, **kw):
    dist, same, groups, ids = make_pairs(per_group=120, n_ids=20)
    if noise:
        dist = np.clip(dist + np.random.default_rng(3).normal(0, noise, len(dist)), 0, 4)
    kw.setdefault("n_bootstrap", 0)
    return evaluate_arrays(dist, same, groups, pair_ids=ids, name=name, **kw)


def test_different_n_folds_is_named_as_a_setting_not_as_other_pairs():
    a, b = _eval("fp", n_folds=10), _eval("q", noise=0.05, n_folds=5)
    with pytest.raises(DataError, match="different settings") as exc:
        compare_pair(a, b, null_draws=0)
    msg = str(exc.value)
    assert "folds '5 contiguous per group' vs '10 contiguous per group' (n_folds 5 vs 10)" in msg
    assert "same pairs" not in msg


def test_own_folds_equal_to_the_contiguous_ones_still_compare():
    a = _eval("fp", n_folds=10)
    b = _eval("q", noise=0.05, folds=a.pairs.folds)  # described as the benchmark's own, equal pair by pair
    assert a.settings["folds"] != b.settings["folds"]
    c = compare_pair(a, b, null_draws=0)
    assert set(c.per_group) == set(a.groups)


def test_other_pairs_with_the_same_settings_are_still_other_pairs():
    a = _eval("fp")
    dist, same, groups, ids = make_pairs(per_group=120, n_ids=20)
    other = evaluate_arrays(dist, ~same, groups, pair_ids=ids, name="x", n_bootstrap=0)
    with pytest.raises(DataError, match="not evaluated on the same pairs"):
        compare_pair(a, other, null_draws=0)


def test_undefined_change_gets_no_interval_and_no_significance_claim():
    dist, same, groups, ids = make_pairs(per_group=120, n_ids=20)
    perfect = dist.copy()
    m = groups == groups[0]
    perfect[m] = np.where(same[m], 0.2, 2.5)  # the reference's first group makes no error: SER infinite
    ref = evaluate_arrays(perfect, same, groups, pair_ids=ids, name="fp", n_bootstrap=100)
    oth = evaluate_arrays(dist, same, groups, pair_ids=ids, name="q", n_bootstrap=100)
    assert ref.fairness.ser == math.inf and math.isfinite(oth.fairness.ser)
    c = compare_pair(ref, oth, null_draws=0)
    ser = c.deltas["ser"]
    assert math.isnan(ser["delta"]) and all(math.isnan(v) for v in ser["delta_ci"])
    assert ser["excludes_zero"] is False
    avg = c.deltas["avg"]  # a defined change keeps its interval
    assert avg["delta"] == pytest.approx(oth.fairness.avg - ref.fairness.avg)
    assert avg["delta_ci"][0] <= avg["delta"] <= avg["delta_ci"][1]


def test_delta_interval_by_hand():
    ref_b = np.array([math.inf] * 5)
    out = _delta_interval(ref_b, np.array([1.0, 2, 3, 4, 5]), math.nan)
    assert out["excludes_zero"] is False and all(math.isnan(v) for v in out["delta_ci"])
    ref_b = np.array([1.0, 1, 1, 1, math.inf, 2, 2, 2])
    oth_b = np.array([2.0, 3, 4, 5, math.inf, 3, 3, 3])  # inf - inf is undefined: left out and counted
    out = _delta_interval(ref_b, oth_b, 1.5)
    with np.errstate(invalid="ignore"):
        diff = oth_b - ref_b
    assert out["undefined_resamples"] == 1
    assert out["delta_ci"] == [_order_interval(diff)[0], _order_interval(diff)[1]] == [1.0, 4.0]
    assert out["excludes_zero"] is True


# ---------------------------------------------------------------- 9. Wilson docstring vector

def test_wilson_docstring_vector():
    lo, hi = wilson_interval(5396 / 6000, 6000)
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.8915, 0.9067)
    lo, hi = wilson_interval(0.8993, 6000)  # the rounded accuracy gives a lower bound 0.0001 lower
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.8914, 0.9067)
    assert "5396 of 6000" in wilson_interval.__doc__ and "[0.8914, 0.9067]" in wilson_interval.__doc__
    assert accuracy_interval(5396, 6000)[:2] == (pytest.approx(100 * wilson_interval(5396 / 6000, 6000)[0]),
                                                 pytest.approx(100 * wilson_interval(5396 / 6000, 6000)[1]))


def test_evaluate_refuses_a_bad_alpha_before_loading_anything():
    from qfair.eval.evaluate import evaluate
    from qfair.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluate: alpha must be in \[0, 1\].*got 2"):
        evaluate("no/such/model.pt", "no/such/bench.bin", alpha=2)  # neither path is looked at
