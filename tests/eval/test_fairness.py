"""Fairness measures against the test vectors of README references [2] and hand computations."""
import math

import numpy as np
import pytest

from qfair.eval import fairness_summary, fdr, garbe, gini, inequity_rate
from qfair.eval.fairness import summary_arrays
from qfair.utils.errors import DataError

STUDY_A_MBF = {"Caucasian": 95.18, "Indian": 92.00, "Asian": 89.93, "African": 90.22}


def test_study_a_mobilefacenet_row():
    s = fairness_summary(STUDY_A_MBF)
    assert (round(s.avg, 2), round(s.std, 2), round(s.ser, 2)) == (91.83, 2.41, 2.09)
    assert round(fairness_summary(STUDY_A_MBF, ddof=0).std, 2) == 2.09
    assert s.gap == pytest.approx(95.18 - 89.93) and s.to == pytest.approx(s.avg - s.std)
    assert (s.best, s.worst, s.note) == ("Caucasian", "Asian", "")


def test_rate_measures_facts_vector():
    fmr = np.array([1e-4, 2e-4, 4e-4, 1e-4])
    fnmr = np.array([0.010, 0.020, 0.015, 0.030])
    assert round(float(fdr(fmr, fnmr, 0.5)), 5) == 0.98985
    assert round(float(inequity_rate(fmr, fnmr, 0.5)), 5) == 3.46410
    assert round(float(gini(fmr)), 5) == 0.41667 and round(float(gini(fnmr)), 5) == 0.28889
    assert round(float(garbe(fmr, fnmr, 0.5)), 5) == 0.35278


def test_zero_error_group_gives_infinite_ser_explained_by_rule_of_three():
    s = fairness_summary({"a": 100.0, "b": 98.5}, n_pairs={"a": 6000, "b": 6000})
    assert s.ser == math.inf
    assert "no errors" in s.note and "rule of three bound" in s.note and "below 0.05%" in s.note
    assert "SER >= 30" in s.note
    both = fairness_summary({"a": 100.0, "b": 100.0})
    assert math.isnan(both.ser) and "no group made any error" in both.note


def test_rate_measures_undefined_cases():
    # one group without false matches, another with: max / min divides by zero, IR is infinite (not undefined)
    assert float(inequity_rate(np.array([0.0, 1e-3]), np.array([0.1, 0.2]))) == math.inf
    assert math.isnan(float(inequity_rate(np.array([0.0, 0.0]), np.array([0.1, 0.2]))))  # 0 / 0
    assert math.isnan(float(gini(np.zeros(4))))


def test_vectorised_equals_loop():
    rng = np.random.default_rng(0)
    acc = rng.uniform(85, 99.9, size=(50, 4))
    arr = summary_arrays(acc, ddof=1)
    for i in range(50):
        s = fairness_summary(dict(zip("abcd", acc[i])))
        assert arr["std"][i] == pytest.approx(s.std) and arr["ser"][i] == pytest.approx(s.ser)
    f, n = rng.uniform(1e-4, 1e-2, (50, 4)), rng.uniform(0.01, 0.1, (50, 4))
    g = garbe(f, n, 0.3)
    for i in range(0, 50, 7):
        assert g[i] == pytest.approx(float(garbe(f[i], n[i], 0.3)))


@pytest.mark.parametrize("bad", [{}, {"a": 0.95, "b": float("nan")}, {"a": 101.0}, {"a": -1.0}])
def test_bad_accuracies(bad):
    with pytest.raises(DataError):
        fairness_summary(bad)
