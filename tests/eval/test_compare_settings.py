"""A paired comparison refuses two results evaluated with different settings (mode, ddof, alpha, target_fmr,
flip, threshold policy): they would count pairs as discordant, or mix two definitions of STD / FDR, that
differ only because of how each was evaluated."""
import numpy as np
import pytest

from qfair.eval import compare, compare_pair, evaluate_arrays
from qfair.eval.metrics import with_threshold
from qfair.utils.errors import DataError

from .conftest import make_pairs


def _eval(name="a", noise=0.0, **kw):
    dist, same, groups, ids = make_pairs(per_group=120, n_ids=20)
    if noise:
        dist = np.clip(dist + np.random.default_rng(3).normal(0, noise, len(dist)), 0, 4)
    kw.setdefault("n_bootstrap", 20)
    return evaluate_arrays(dist, same, groups, pair_ids=ids, name=name, **kw)


@pytest.mark.parametrize("kw,other,words", [
    ({"mode": "exact"}, {"mode": "grid"}, ["mode 'grid' vs 'exact'"]),
    ({"ddof": 1}, {"ddof": 0}, ["ddof 0 vs 1"]),
    ({"alpha": 0.5}, {"alpha": 0.25}, ["alpha 0.25 vs 0.5"]),
    ({"target_fmr": 1e-3}, {"target_fmr": 1e-2}, ["target_fmr 0.01 vs 0.001"]),
    ({"mode": "exact", "ddof": 1}, {"mode": "grid", "ddof": 0}, ["mode 'grid' vs 'exact'", "ddof 0 vs 1"]),
])
def test_compare_pair_refuses_different_settings(kw, other, words):
    a, b = _eval("a", **kw), _eval("b", **other)
    with pytest.raises(DataError, match="different settings") as exc:
        compare_pair(a, b)
    msg = str(exc.value)
    assert all(w in msg for w in words), msg
    assert "'a'" in msg and "'b'" in msg and "evaluate both with the same settings" in msg


def test_same_model_with_mode_and_ddof_changed_is_refused_not_reported():
    """The reproduced case: one model, exact/ddof=1 vs grid/ddof=0, used to give discordant pairs and a STD of B
    computed with A's ddof."""
    a = _eval("exact", mode="exact", ddof=1)
    b = _eval("grid", mode="grid", ddof=0)
    assert (a.pairs.correct != b.pairs.correct).any()  # the settings alone change pair decisions
    with pytest.raises(DataError, match="ddof 0 vs 1"):
        compare_pair(a, b)


def test_flip_recorded_in_meta_must_match():
    a = _eval("a", meta={"flip": True})
    b = _eval("b", meta={"flip": False})
    with pytest.raises(DataError, match="flip False vs True"):
        compare_pair(a, b)
    compare_pair(a, _eval("c", meta={"flip": True}), null_draws=0)
    compare_pair(a, _eval("d"), null_draws=0)  # evaluate_arrays without flip recorded: nothing to compare


def test_threshold_policy():
    ref = _eval("ref")
    oth = _eval("oth", noise=0.05)
    compare_pair(ref, oth, null_draws=0)  # each at its own threshold at the same target FMR: one policy
    inherited = with_threshold(oth, ref.threshold["value"])  # --inherit-threshold: at the reference's threshold
    compare_pair(ref, inherited, null_draws=0)
    elsewhere = with_threshold(oth, ref.threshold["value"] + 0.05)
    with pytest.raises(DataError, match="threshold policy: inherited threshold") as exc:
        compare_pair(ref, elsewhere)
    assert repr(ref.threshold["value"] + 0.05) in str(exc.value) and "target FMR 0.001" in str(exc.value)
    ref_elsewhere = with_threshold(ref, ref.threshold["value"] + 0.05)
    with pytest.raises(DataError, match="threshold policy"):
        compare_pair(ref_elsewhere, oth)


def test_same_settings_still_compare_and_bootstrap_settings_may_differ():
    a = _eval("a", mode="grid", ddof=0, alpha=0.3)
    b = _eval("b", noise=0.05, mode="grid", ddof=0, alpha=0.3, n_bootstrap=10, seed=4)
    c = compare_pair(a, b, null_draws=0)
    assert c.deltas["std"]["other"] == pytest.approx(b.fairness.std)


def test_compare_inherits_the_check_before_any_pair_is_computed():
    a, b, c = _eval("fp32"), _eval("w8", noise=0.05), _eval("w6", noise=0.1, ddof=0)
    with pytest.raises(DataError, match="'w6' and 'fp32' were evaluated with different settings"):
        compare(a, b, c, reference="fp32")
    assert len(compare(a, b, reference="fp32", null_draws=0)) == 1
