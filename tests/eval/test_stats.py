"""Intervals and tests against the vectors of README references [2], hand computations and (when installed) scipy."""
import math

import numpy as np
import pytest

from qfair.eval.stats import (
    accuracy_interval,
    binom_two_sided_half,
    chi2_sf_1dof,
    holm,
    mcnemar,
    percentile_interval,
    significance_mark,
    wilson_interval,
)


def test_wilson_facts_vector():
    # README references [2]: 89.93% of 6000 pairs -> [89.15, 90.67]; 89.93% is 5396 correct pairs (89.933%).
    lo, hi, how = accuracy_interval(5396, 6000)
    assert (round(lo, 2), round(hi, 2), how) == (89.15, 90.67, "wilson")
    lo, hi = wilson_interval(0.5, 100)
    # hand: centre 0.5, half = 1.96*sqrt(0.0025 + 1.96^2/40000)/(1 + 1.96^2/100)
    z = 1.959963984540054
    half = z * math.sqrt(0.0025 + z * z / 40000) / (1 + z * z / 100)
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)


def test_rule_of_three_for_zero_errors():
    lo, hi, how = accuracy_interval(6000, 6000)
    assert hi == 100.0 and lo == pytest.approx(100 - 0.05) and "rule of three" in how
    lo, hi, how = accuracy_interval(0, 300)
    assert lo == 0.0 and hi == pytest.approx(1.0) and "rule of three" in how
    assert math.isnan(accuracy_interval(0, 0)[0])


def test_small_groups_use_the_exact_bound_inside_0_100():
    # 3/n exceeds 100 % below n = 3: a group of 2 pairs, none correct, gave [0, 150]
    lo, hi, how = accuracy_interval(0, 2)
    assert lo == 0.0 and hi == pytest.approx(100 * (1 - math.sqrt(0.05))) and "exact" in how  # 77.64
    lo, hi, how = accuracy_interval(2, 2)
    assert hi == 100.0 and lo == pytest.approx(100 * math.sqrt(0.05)) and "exact" in how
    lo, hi, _ = accuracy_interval(0, 1)
    assert hi == pytest.approx(95.0)  # one trial: P(0 events) = 1 - p = 0.05 at p = 0.95
    for n in range(1, 40):
        for k in (0, n):
            lo, hi, _ = accuracy_interval(k, n)
            assert 0.0 <= lo <= hi <= 100.0


def test_mcnemar_facts_vector():
    r = mcnemar(95, 60)
    assert round(r.statistic, 3) == 7.458 and round(r.p_value, 4) == 0.0063 and r.method == "chi2-cc"
    exact = mcnemar(95, 60, exact_below=1000)
    assert round(exact.p_value, 4) == 0.0061 and exact.method == "exact-binomial"


def test_mcnemar_small_counts_use_exact_binomial():
    r = mcnemar(10, 2)
    # hand: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12 = 2 * 79 / 4096
    assert r.method == "exact-binomial" and r.p_value == pytest.approx(2 * 79 / 4096)
    assert mcnemar(0, 0).p_value == 1.0 and mcnemar(5, 5).p_value == 1.0


def test_against_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")
    for x in (0.1, 1.0, 3.84, 7.458, 30.0):
        assert chi2_sf_1dof(x) == pytest.approx(stats.chi2.sf(x, 1), rel=1e-10)
    for k, n in ((3, 20), (60, 155), (0, 7), (400, 1000)):
        assert binom_two_sided_half(k, n) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_holm_hand_computed():
    # sorted p: 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08 -> max 0.09), 0.5 (x1)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    assert holm([0.6, 0.9]).tolist() == [1.0, 1.0]
    assert [significance_mark(p) for p in (0.2, 0.04, 0.009, 0.0001)] == ["", "*", "**", "***"]


def test_percentile_interval_keeps_inf_and_ignores_nan():
    x = np.array([1.0] * 10 + [1.5] * 80 + [np.inf] * 10 + [np.nan] * 5)
    lo, hi = percentile_interval(x)
    assert lo == 1.0 and hi == np.inf
