"""Threshold and error-rate functions against brute force."""
import numpy as np
import pytest

from qfair.eval import auc, det_curve, eer, fnmr_at_fmr, rates_at, threshold_at_fmr
from qfair.utils.errors import DataError


def _scores(seed=0, n=400):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    s = np.where(same, rng.normal(0.6, 0.15, n), rng.normal(0.1, 0.12, n)).round(3)  # rounding -> ties
    return s, same


@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.3])
def test_threshold_at_fmr_is_the_smallest_meeting_the_target(target):
    s, same = _scores()
    imp = s[~same]
    t = threshold_at_fmr(imp, target)
    assert np.mean(imp >= t) <= target
    below = imp[imp < t]
    if len(below):  # any lower threshold (down to the next score) would exceed the target
        assert np.mean(imp >= below.max()) > target


def test_rates_hand_example():
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    assert rates_at(s, same, 0.5) == (1 / 3, 1 / 3)
    assert auc(s, same) == pytest.approx(8 / 9)  # 8 of 9 genuine-impostor orderings right
    assert eer(s, same) == pytest.approx(1 / 3)


def test_auc_and_eer_against_brute_force():
    s, same = _scores(1)
    g, i = s[same], s[~same]
    brute = (np.sum(g[:, None] > i[None, :]) + 0.5 * np.sum(g[:, None] == i[None, :])) / (len(g) * len(i))
    assert auc(s, same) == pytest.approx(brute)
    t, fmr, fnmr = det_curve(s, same)
    k = int(np.argmin(np.abs(fmr - fnmr)))
    assert abs(eer(s, same) - (fmr[k] + fnmr[k]) / 2) <= abs(fmr[k] - fnmr[k]) / 2 + 1e-12
    f_at = fnmr_at_fmr(s, same, 0.01)
    assert f_at == pytest.approx(np.mean(g < threshold_at_fmr(i, 0.01)))


def test_undefined_without_impostors():
    s = np.array([0.5, 0.6])
    assert np.isnan(eer(s, np.array([True, True]))) and np.isnan(auc(s, np.array([True, True])))
    with pytest.raises(DataError, match="no impostor"):
        threshold_at_fmr(np.array([]), 0.01)
