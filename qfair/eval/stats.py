"""Small statistics used by the evaluator, in plain numpy/math (scipy not needed).

Wilson intervals, the rule of three, McNemar's test (chi-square with continuity correction, exact
binomial for few discordant pairs), Holm's step-down correction and percentile intervals.
Conventions and test vectors: README references [2].
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(p: float | np.ndarray, n: int | np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``p`` (0..1) observed on ``n`` trials. Vectorised.

    README references [2]: 5396 of 6000 (p = 0.89933, printed as 89.93%) -> [0.8915, 0.9067]; the
    rounded p = 0.8993 gives [0.8914, 0.9067].
    """
    p = np.asarray(p, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def rule_of_three(n: int) -> float:
    """95% upper bound of a rate when 0 events were seen in ``n`` trials: 3 / n."""
    return 3.0 / n if n > 0 else float("nan")


def accuracy_interval(n_correct: int, n: int, z: float = Z95) -> tuple[float, float, str]:
    """95% interval of an accuracy in percent: ``(lo, hi, method)``.

    Wilson in general; with zero errors (or zero correct) the rule of three bounds the error rate
    (Wilson is also valid there, but the rule of three is the standard, easily checked statement).
    The rule of three approximates the exact one-sided 95% bound 1 - 0.05^(1/n) only for large n (it
    exceeds 100% below n = 3); below 30 pairs the exact bound is used instead.
    """
    if n <= 0:
        return float("nan"), float("nan"), "none (no pairs)"
    if n_correct in (0, n):
        exact = n < 30
        bound = 1.0 - 0.05 ** (1.0 / n) if exact else rule_of_three(n)
        how = "exact one-sided 95%" if exact else "rule of three"
        if n_correct == n:
            return 100.0 * (1.0 - bound), 100.0, f"{how} (no errors)"
        return 0.0, 100.0 * bound, f"{how} (no correct pairs)"
    lo, hi = wilson_interval(n_correct / n, n, z)
    return float(lo) * 100.0, float(hi) * 100.0, "wilson"


def chi2_sf_1dof(x: float) -> float:
    """Upper tail P(X > x) of a chi-square with one degree of freedom: erfc(sqrt(x / 2))."""
    if x <= 0:
        return 1.0
    return math.erfc(math.sqrt(x / 2.0))


def binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided binomial p-value of ``k`` successes in ``n`` trials with p = 1/2.

    Symmetric case: p = min(1, 2 * P(X <= min(k, n - k))). Integer arithmetic, so exact for any n.
    """
    if n <= 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two classifiers on the same pairs.

    ``b``: pairs the reference gets right and the other model wrong; ``c``: the reverse.
    """

    b: int
    c: int
    statistic: float  # chi-square with continuity correction (reported even when the exact test is used)
    p_value: float
    method: str  # "chi2-cc" or "exact-binomial" or "none" (no discordant pairs)

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(b: int, c: int, exact_below: int = 25) -> McNemarResult:
    """McNemar's test: chi2 = (|b - c| - 1)^2 / (b + c); exact binomial when b + c < ``exact_below``.

    README references [2]: b=95, c=60 -> chi2 7.458, p 0.0063 (exact p 0.0061).
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"McNemar counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "none")
    stat = (max(abs(b - c) - 1, 0)) ** 2 / n
    if n < exact_below:
        return McNemarResult(b, c, stat, binom_two_sided_half(min(b, c), n), "exact-binomial")
    return McNemarResult(b, c, stat, chi2_sf_1dof(stat), "chi2-cc")


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control), same order as the input."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(adj)
    out = np.empty(m)
    out[order] = adj
    return out


def significance_mark(p: float) -> str:
    """'*' p<0.05, '**' p<0.01, '***' p<0.001 (applied to Holm-adjusted p-values)."""
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def percentile_interval(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along ``axis``; NaN samples are ignored, infinities kept.

    Uses the order statistics below/above the quantiles (no interpolation), so ``inf`` samples give
    an ``inf`` bound instead of ``nan``.
    """
    x = np.asarray(samples, dtype=np.float64)
    a = (1.0 - level) / 2.0
    with warnings.catch_warnings():  # an all-NaN statistic (undefined in every resample) gives NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(x, a, axis=axis, method="lower")
        hi = np.nanquantile(x, 1.0 - a, axis=axis, method="higher")
    return lo, hi
