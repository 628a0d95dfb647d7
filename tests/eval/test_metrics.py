"""evaluate_arrays: per-group protocol, bad input, and the identity bootstrap."""
import math

import numpy as np
import pytest

from qfair.eval import evaluate_arrays, kfold_predictions
from qfair.eval.bootstrap import PAIR_NOTE, Resampler
from qfair.eval.verification import contiguous_folds
from qfair.utils.errors import DataError
from qfair.utils.io import to_json

from .conftest import GROUPS, make_pairs


def test_per_group_accuracy_follows_the_protocol(pairs4):
    dist, same, groups, ids = pairs4
    r = evaluate_arrays(dist, same, groups, pair_ids=ids, n_bootstrap=50)
    assert r.groups == list(GROUPS)
    for g in GROUPS:
        m = groups == g
        _, _, acc = kfold_predictions(dist[m], same[m], contiguous_folds(int(m.sum()), 10), "exact")
        assert r.per_group[g]["accuracy"] == pytest.approx(np.mean(acc) * 100)
        assert r.per_group[g]["n_pairs"] == 600
    assert r.fairness.avg == pytest.approx(np.mean(list(r.accuracies().values())))
    assert r.per_group["Caucasian"]["accuracy"] > r.per_group["African"]["accuracy"]  # built-in shift
    pooled = (1 - dist / 2)[~same]
    assert np.mean(pooled >= r.threshold["value"]) <= 1e-3
    d = r.to_dict()
    assert '"ser"' in to_json(d) and d["bootstrap"]["method"] == "identity"


def test_group_without_pairs_is_an_error(pairs4):
    dist, same, groups, ids = pairs4
    with pytest.raises(DataError, match="'Martian'.*no pairs.*Caucasian"):
        evaluate_arrays(dist, same, groups, groups_wanted=["Caucasian", "Martian"], n_bootstrap=0)
    sub = evaluate_arrays(dist, same, groups, groups_wanted=["Asian", "Indian"], n_bootstrap=0)
    assert sub.groups == ["Asian", "Indian"] and sub.overall["n_pairs"] == 1200
    with pytest.raises(DataError, match="no pairs"):
        evaluate_arrays(np.array([]), np.array([], bool), np.array([], str))


def test_zero_error_group_gives_inf_ser_and_rule_of_three(pairs4):
    dist, same, groups, ids = pairs4
    dist = dist.copy()
    m = groups == "Caucasian"
    dist[m] = np.where(same[m], 0.2, 1.8)  # perfectly separable -> no errors
    r = evaluate_arrays(dist, same, groups, pair_ids=ids, n_bootstrap=100)
    pg = r.per_group["Caucasian"]
    assert pg["accuracy"] == 100.0 and pg["accuracy_ci_method"].startswith("rule of three")
    assert pg["accuracy_ci"] == [pytest.approx(100 * (1 - 3 / 600)), 100.0]
    assert r.fairness.ser == math.inf and any("SER is infinite" in n for n in r.notes)
    assert r.fairness_ci["ser"][1] == math.inf
    assert '"inf"' in to_json(r.to_dict())


def test_group_without_impostors_has_nan_rates(pairs4):
    dist, same, groups, ids = pairs4
    keep = ~((groups == "Asian") & ~same)
    r = evaluate_arrays(dist[keep], same[keep], groups[keep], n_bootstrap=20)
    assert math.isnan(r.per_group["Asian"]["fmr"]) and any("no impostor" in n for n in r.notes)


def test_resampler_weights_are_identity_counts():
    dist, same, groups, ids = make_pairs(per_group=200, n_ids=15)
    codes = np.searchsorted(np.array(sorted(GROUPS)), groups)  # any consistent coding
    rs = Resampler(codes, 4, ids, n_bootstrap=30, seed=3)
    W = rs.group_sums(np.eye(len(dist)))  # column p of the identity matrix -> weight of pair p
    for g in range(4):
        m = np.flatnonzero(codes == g)
        for b in range(30):
            w = W[b, g, m]
            c = {}  # identity count recovered from genuine pairs
            for p, wp in zip(m, w):
                if ids[p, 0] == ids[p, 1]:
                    assert c.setdefault(ids[p, 0], wp) == wp
            for p, wp in zip(m, w):
                if ids[p, 0] != ids[p, 1] and ids[p, 0] in c and ids[p, 1] in c:
                    assert wp == c[ids[p, 0]] * c[ids[p, 1]]
            n_ids = len(np.unique(ids[m]))
            assert sum(c.values()) <= n_ids  # counts of the drawn identities sum to the identity total


def test_identity_bootstrap_is_wider_than_pair_bootstrap_for_clustered_errors():
    rng = np.random.default_rng(0)
    n_ids, per_id = 40, 30
    ida = np.repeat(np.arange(n_ids), per_id)
    same = np.tile(np.arange(per_id) % 2 == 0, n_ids)
    idb = np.where(same, ida, (ida + 1) % n_ids)
    hard = np.isin(ida, rng.choice(n_ids, 8, replace=False))  # all errors sit on a few identities
    dist = np.where(same, np.where(hard, 1.9, 0.3), 1.5) + rng.normal(0, 0.01, len(ida))
    groups = np.full(len(ida), "all")
    ids = np.stack([ida.astype(str), idb.astype(str)], 1)
    r_id = evaluate_arrays(dist, same, groups, pair_ids=ids, n_bootstrap=400)
    r_pair = evaluate_arrays(dist, same, groups, n_bootstrap=400)
    w_id = np.diff(r_id.per_group["all"]["accuracy_ci_bootstrap"])[0]
    w_pair = np.diff(r_pair.per_group["all"]["accuracy_ci_bootstrap"])[0]
    assert w_id > 1.5 * w_pair
    assert PAIR_NOTE in r_pair.notes and r_pair.bootstrap["method"] == "pair"
    lo, hi = r_id.per_group["all"]["accuracy_ci_bootstrap"]
    assert lo <= r_id.per_group["all"]["accuracy"] <= hi


def test_inherited_threshold_and_grid_mode(pairs4):
    dist, same, groups, ids = pairs4
    r = evaluate_arrays(dist, same, groups, threshold=0.3, mode="grid", n_bootstrap=0)
    assert r.threshold["source"] == "inherited" and r.threshold["value"] == 0.3
    score = 1 - dist / 2
    m = groups == "Indian"
    assert r.per_group["Indian"]["fmr"] == pytest.approx(np.mean(score[m & ~same] >= 0.3))
    assert r.per_group["Indian"]["fnmr"] == pytest.approx(np.mean(score[m & same] < 0.3))
