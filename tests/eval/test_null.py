"""Group-blind permutation null (qfair.eval.null): exact invariances, detection of group-specific
damage, calibration under group-blind noise, errors, and its place in comparisons and reports."""
import json

import numpy as np
import pytest

from qfair.eval import compare_pair, evaluate_arrays
from qfair.eval.null import group_blind_null
from qfair.utils.errors import DataError

from .conftest import GROUPS, make_pairs


def _eval(dist, name="fp32", base=None):
    d, same, groups, ids = base if base is not None else make_pairs()
    return evaluate_arrays(dist, same, groups, pair_ids=ids, name=name, n_bootstrap=0)


def test_identical_model_every_draw_is_the_reference():
    base = make_pairs()
    ref, twin = _eval(base[0], base=base), _eval(base[0].copy(), "twin", base)
    n = group_blind_null(ref, twin, n_draws=20)
    assert n["mean_abs_score_change"] == 0.0
    for g in GROUPS:
        v = n["per_group"][g]
        assert v["observed"] == v["reference"] == ref.per_group[g]["accuracy"]
        assert v["expected"] == pytest.approx(v["reference"], abs=1e-9)  # a mean of identical draws
        assert v["interval"] == pytest.approx([v["reference"]] * 2, abs=1e-9)
        assert v["excess_error_pp"] == pytest.approx(0.0, abs=1e-9) and v["p"] == 1.0
    assert n["metrics"]["ser"]["expected"] == pytest.approx(ref.fairness.ser)
    assert n["metrics"]["std"]["p"] == 1.0


def test_a_constant_change_per_pair_kind_is_left_unchanged_by_every_permutation():
    # the null exchanges changes among genuine pairs and among impostor pairs: constant changes within
    # each kind are a fixed point, so every draw reproduces the observed model exactly
    base = make_pairs()
    dist, same = base[0], base[1]
    shifted = np.clip(dist + np.where(same, 0.07, -0.05), 0, 4)
    ref, oth = _eval(dist, base=base), _eval(shifted, "shifted", base)
    n = group_blind_null(ref, oth, n_draws=15)
    for g in GROUPS:
        assert n["per_group"][g]["expected"] == pytest.approx(oth.per_group[g]["accuracy"], abs=1e-9)
        assert n["per_group"][g]["excess_error_pp"] == pytest.approx(0.0, abs=1e-9)
    for k in ("avg", "std", "ser"):
        assert n["metrics"][k]["expected"] == pytest.approx(n["metrics"][k]["observed"], abs=1e-9)


def test_accuracy_neutral_changes_are_kept_by_the_null():
    # a monotone change of every distance (a compressed score range) and a shift of one group's distances
    # cost no accuracy under per-group k-fold thresholds; the null keeps both (the trend and the group
    # shift), so it must not turn them into noise
    base = make_pairs()
    dist, _, groups, _ = base
    changed = 0.9 * dist + 0.03 * dist ** 2 + 0.15 * (groups == "Asian")
    ref, oth = _eval(dist, base=base), _eval(changed, "monotone", base)
    for g in GROUPS:
        assert oth.per_group[g]["accuracy"] == ref.per_group[g]["accuracy"]
    n = group_blind_null(ref, oth, n_draws=25)
    for g in GROUPS:
        assert n["per_group"][g]["expected"] == pytest.approx(ref.per_group[g]["accuracy"], abs=1e-9)
        assert n["per_group"][g]["p"] == 1.0


def test_damage_confined_to_one_group_is_flagged_and_the_others_look_better_than_the_null():
    base = make_pairs(per_group=1200, n_ids=120)
    dist, same, groups, _ = base
    rng = np.random.default_rng(3)
    hit = groups == "Indian"
    worse = np.clip(dist + hit * rng.normal(0, 0.4, len(dist)), 0, 4)
    ref, oth = _eval(dist, base=base), _eval(worse, "w6", base)
    n = group_blind_null(ref, oth, n_draws=100, seed=1)
    ind = n["per_group"]["Indian"]
    assert ind["excess_error_pp"] > 1.0 and ind["p_holm"] < 0.05
    assert ind["observed"] < ind["interval"][0]
    for g in ("Caucasian", "Asian"):  # untouched groups keep their accuracy, the null spreads the damage to them
        assert n["per_group"][g]["observed"] == n["per_group"][g]["reference"]
        assert n["per_group"][g]["excess_error_pp"] < 0
    assert n["metrics"]["std"]["observed"] > n["metrics"]["std"]["expected"]


def test_group_blind_noise_is_rarely_flagged():
    # calibration: when the change really is blind to the group, SER and the groups stay inside the null
    base = make_pairs(per_group=600)
    ref = _eval(base[0], base=base)
    flagged_ser, flagged_group = 0, 0
    for s in range(20):
        noisy = np.clip(base[0] + np.random.default_rng(100 + s).normal(0, 0.08, len(base[0])), 0, 4)
        n = group_blind_null(ref, _eval(noisy, "noisy", base), n_draws=60, seed=s)
        flagged_ser += n["metrics"]["ser"]["p"] < 0.05
        flagged_group += min(v["p_holm"] for v in n["per_group"].values()) < 0.05
    assert flagged_ser <= 4 and flagged_group <= 4  # nominal rate 5%: 1 of 20 expected


def test_errors_name_the_problem():
    base = make_pairs()
    ref = _eval(base[0], base=base)
    with pytest.raises(DataError, match="at least 1 draw"):
        group_blind_null(ref, ref, n_draws=0)
    other = make_pairs(seed=5)
    with pytest.raises(DataError, match="same pairs"):
        group_blind_null(ref, _eval(other[0], "other", other))
    from dataclasses import replace

    with pytest.raises(DataError, match="per-pair data"):
        group_blind_null(ref, replace(ref, pairs=None))


def test_compare_pair_carries_the_null_into_json_and_the_report(tmp_path):
    from qfair.report import build_tables, write_report

    base = make_pairs()
    noisy = np.clip(base[0] + np.random.default_rng(0).normal(0, 0.1, len(base[0])), 0, 4)
    ref, oth = _eval(base[0], base=base), _eval(noisy, "w6", base)
    assert compare_pair(ref, oth, n_bootstrap=0, null_draws=0).null is None
    c = compare_pair(ref, oth, n_bootstrap=0, null_draws=30)
    assert c.null["n_draws"] == 30 and set(c.null["per_group"]) == set(GROUPS)
    assert c.null == group_blind_null(ref, oth, n_draws=30, seed=0)  # the comparison's seed, reproducible
    json.dumps(c.to_dict(), allow_nan=True)
    tables = build_tables([ref, oth], [c])
    assert any("group-blind change of the same size" in note for note in tables[0].notes)
    md = write_report(tmp_path, [ref, oth], [c], figures=False)["report.md"].read_text()
    assert "Group-blind null (30 permutations" in md and "| SER |" in md
