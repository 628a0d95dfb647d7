"""Paired comparison: McNemar counts, Holm, paired bootstrap and FMR drift."""
import numpy as np
import pytest

from qfair.eval import compare, compare_pair, evaluate_arrays, mcnemar
from qfair.eval.stats import holm
from qfair.utils.errors import DataError

from .conftest import GROUPS, make_pairs


def _two_models(noise=0.15, seed=1):
    dist, same, groups, ids = make_pairs()
    rng = np.random.default_rng(seed)
    worse = np.clip(dist + rng.normal(0, noise, len(dist)) * (groups == "African"), 0, 4)
    ref = evaluate_arrays(dist, same, groups, pair_ids=ids, name="fp32", n_bootstrap=300)
    oth = evaluate_arrays(worse, same, groups, pair_ids=ids, name="w6", meta={"quantized": True}, n_bootstrap=300)
    return ref, oth


def test_mcnemar_counts_and_holm_by_hand():
    ref, oth = _two_models()
    c = compare_pair(ref, oth)
    ps = []
    for g in GROUPS:
        m = ref.pairs.groups == g
        b = int(np.sum(ref.pairs.correct[m] & ~oth.pairs.correct[m]))
        cc = int(np.sum(~ref.pairs.correct[m] & oth.pairs.correct[m]))
        assert (c.per_group[g]["b"], c.per_group[g]["c"]) == (b, cc)
        assert c.per_group[g]["p_value"] == mcnemar(b, cc).p_value
        ps.append(mcnemar(b, cc).p_value)
        err = 100 * (np.mean(~oth.pairs.correct[m]) - np.mean(~ref.pairs.correct[m]))
        assert c.per_group[g]["error_delta_pp"] == pytest.approx(err)
    np.testing.assert_allclose([c.per_group[g]["p_holm"] for g in GROUPS], holm(ps))
    # the noise only hits one group: its error grows, the others are untouched (b = c = 0)
    assert c.per_group["African"]["b"] > c.per_group["African"]["c"]
    assert c.per_group["Caucasian"]["b"] == c.per_group["Caucasian"]["c"] == 0
    assert c.deltas["std"]["delta"] > 0 and c.deltas["avg"]["delta"] < 0
    assert c.deltas["avg"]["delta_ci"][1] <= 0  # the drop is entirely in the same direction


def test_identical_models_have_zero_deltas_with_zero_width_intervals():
    ref, _ = _two_models()
    dist, same, groups, ids = make_pairs()
    twin = evaluate_arrays(dist, same, groups, pair_ids=ids, name="twin", n_bootstrap=300)
    c = compare_pair(ref, twin)
    for k in ("avg", "std", "gap"):
        assert c.deltas[k]["delta"] == 0 and c.deltas[k]["delta_ci"] == [0.0, 0.0]
    assert all(d["mark"] == "" and d["p_holm"] == 1.0 for d in c.per_group.values())


def test_fmr_drift_at_reference_threshold():
    dist, same, groups, ids = make_pairs()
    ref = evaluate_arrays(dist, same, groups, pair_ids=ids, name="fp32", n_bootstrap=100)
    shifted = np.clip(dist - 0.1 * (groups == "Asian"), 0, 4)  # Asian scores higher -> more false matches
    oth = evaluate_arrays(shifted, same, groups, pair_ids=ids, name="q", n_bootstrap=100)
    c = compare_pair(ref, oth)
    t = ref.threshold["value"]
    m = (groups == "Asian") & ~same
    want = np.mean((1 - shifted[m] / 2) >= t) - np.mean((1 - dist[m] / 2) >= t)
    assert c.fmr_drift["per_group"]["Asian"]["fmr_delta"] == pytest.approx(want)
    assert want > 0 and c.fmr_drift["per_group"]["Indian"]["fmr_delta"] == 0


def test_compare_picks_float_reference_and_rejects_different_pairs():
    ref, oth = _two_models()
    out = compare(oth, ref)
    assert len(out) == 1 and out[0].reference == "fp32" and out[0].other == "w6"
    dist, same, groups, ids = make_pairs(seed=7)
    other_bench = evaluate_arrays(dist, ~same, groups, pair_ids=ids, name="x", n_bootstrap=0)
    with pytest.raises(DataError, match="same pairs"):
        compare_pair(ref, other_bench)
    with pytest.raises(DataError, match="not among"):
        compare(ref, oth, reference="nope")


def test_compare_with_a_single_result_is_an_error_not_an_empty_list():
    ref, _ = _two_models()
    with pytest.raises(DataError, match="got only 'fp32'.*compare\\(float_result, quantized_result"):
        compare(ref)
    with pytest.raises(DataError, match="got none"):
        compare()
