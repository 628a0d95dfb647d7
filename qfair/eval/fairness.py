"""Group fairness measures (README references [2]).

From per-group accuracies: AVG, STD (ddof, default 1 as in the studies), SER, max-min gap, TO.
From per-group error rates at one global threshold: FDR, IR, GARBE with their ``alpha``.
Every function also accepts a leading batch axis (bootstrap resamples): arrays ``(..., G)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ..utils.errors import ConfigError, DataError


@dataclass(frozen=True)
class FairnessSummary:
    """Fairness of per-group accuracies (percent). ``ser`` may be ``inf`` (see ``note``)."""

    avg: float
    std: float
    ser: float
    gap: float
    to: float
    ddof: int
    best: str
    worst: str
    n_groups: int
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def summary_arrays(acc: np.ndarray, ddof: int = 1) -> dict[str, np.ndarray]:
    """Vectorised AVG/STD/SER/GAP/TO over the last axis of ``acc`` (percent, shape (..., G)).

    SER = (100 - min acc) / (100 - max acc): ``inf`` when the best group has no error, ``nan`` when
    no group has any error (0 / 0).
    """
    acc = np.asarray(acc, dtype=np.float64)
    g = acc.shape[-1]
    avg = acc.mean(axis=-1)
    std = acc.std(axis=-1, ddof=ddof) if g > ddof else np.full(avg.shape, np.nan)
    err_max = 100.0 - acc.min(axis=-1)
    err_min = 100.0 - acc.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ser = np.where(err_min > 0, err_max / np.where(err_min > 0, err_min, 1.0),
                       np.where(err_max > 0, np.inf, np.nan))
    gap = acc.max(axis=-1) - acc.min(axis=-1)
    return {"avg": avg, "std": std, "ser": ser, "gap": gap, "to": avg - std}


def fairness_summary(accuracies: Mapping[str, float], ddof: int = 1,
                     n_pairs: Mapping[str, int] | None = None) -> FairnessSummary:
    """AVG, STD, SER, gap and TO of per-group accuracies in percent (e.g. numbers from a paper).

    ``n_pairs`` (optional, pairs per group) lets an infinite SER be bounded with the rule of three.
    README references [2]: {95.18, 92.00, 89.93, 90.22} -> AVG 91.83, STD 2.41 (ddof=0: 2.09), SER 2.09.
    """
    if not accuracies:
        raise DataError("fairness_summary needs at least one group accuracy, got none")
    names = list(accuracies)
    acc = np.array([float(accuracies[k]) for k in names], dtype=np.float64)
    bad = [k for k, a in zip(names, acc) if not math.isfinite(a) or a < 0 or a > 100]
    if bad:
        raise DataError(
            f"group accuracies must be percentages in [0, 100]; bad values for {', '.join(map(repr, bad))}: "
            f"{', '.join(str(accuracies[k]) for k in bad)} (a fraction like 0.95 must be given as 95.0)")
    s = {k: float(v) for k, v in summary_arrays(acc, ddof).items()}
    best, worst = names[int(np.argmax(acc))], names[int(np.argmin(acc))]
    notes = []
    if len(names) <= ddof:
        notes.append(f"STD undefined: {len(names)} group(s) with ddof={ddof}")
    if math.isinf(s["ser"]):
        msg = f"SER is infinite: group '{best}' made no errors (division by a zero error rate)"
        if n_pairs and n_pairs.get(best):
            from .stats import accuracy_interval

            n = int(n_pairs[best])
            lo, _, how = accuracy_interval(n, n)  # rule of three 3/n, or the exact bound for small n
            err = 100.0 - lo
            msg += (f"; by the {how.split(' (')[0]} bound its error rate is below {err:.3g}% (95%, {n} pairs), "
                    f"so SER >= {(100.0 - acc.min()) / err:.3g}")
        notes.append(msg)
    elif math.isnan(s["ser"]):
        notes.append("SER undefined: no group made any error (0 / 0)")
    return FairnessSummary(avg=s["avg"], std=s["std"], ser=s["ser"], gap=s["gap"], to=s["to"], ddof=ddof,
                           best=best, worst=worst, n_groups=len(names), note="; ".join(notes))


def check_alpha(alpha: float, where: str = "fairness measure") -> float:
    """``alpha`` (weight of FMR against FNMR in FDR / IR / GARBE) as a float in [0, 1], else ConfigError."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = float("nan")
    if not 0.0 <= a <= 1.0:  # also refuses NaN
        raise ConfigError(f"{where}: alpha must be in [0, 1] (the weight of FMR against FNMR in FDR, IR and "
                          f"GARBE), got {alpha!r}; use e.g. alpha=0.5 (--alpha 0.5) to weigh both equally")
    return a


def fdr(fmr: np.ndarray, fnmr: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Fairness Discrepancy Rate: 1 - (alpha * max|FMR_i - FMR_j| + (1 - alpha) * max|FNMR_i - FNMR_j|)."""
    alpha = check_alpha(alpha, "FDR")
    fmr, fnmr = np.asarray(fmr, float), np.asarray(fnmr, float)
    d_fmr = fmr.max(axis=-1) - fmr.min(axis=-1)
    d_fnmr = fnmr.max(axis=-1) - fnmr.min(axis=-1)
    return 1.0 - (alpha * d_fmr + (1.0 - alpha) * d_fnmr)


def rate_ratio(rate: np.ndarray) -> np.ndarray:
    """max / min of error rates over the last axis: ``inf`` where the minimum is 0 and the maximum is not
    (a group without errors of that kind), ``nan`` where every rate is 0 (0 / 0) or a rate is NaN."""
    rate = np.asarray(rate, float)
    lo, hi = rate.min(axis=-1), rate.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), np.where(hi > 0, np.inf, np.nan))


def inequity_rate(fmr: np.ndarray, fnmr: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """IR = (max FMR / min FMR)^alpha * (max FNMR / min FNMR)^(1 - alpha).

    ``inf`` where a group has a rate 0 that another group does not (the ratio divides by zero, see
    :func:`rate_ratio`); ``nan`` where a ratio with a positive weight is 0 / 0 (every group has that rate 0)
    or a rate is undefined (NaN). A ratio with weight 0 (``alpha`` 0 or 1) does not enter.
    """
    alpha = check_alpha(alpha, "IR")
    r_fmr, r_fnmr = rate_ratio(fmr), rate_ratio(fnmr)
    with np.errstate(invalid="ignore"):
        return np.power(r_fmr, alpha) * np.power(r_fnmr, 1.0 - alpha)


def gini(x: np.ndarray) -> np.ndarray:
    """G(x) = n/(n-1) * sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)) over the last axis; NaN if mean is 0."""
    x = np.asarray(x, float)
    n = x.shape[-1]
    if n < 2:
        return np.full(x.shape[:-1], np.nan)
    diff = np.abs(x[..., :, None] - x[..., None, :]).sum(axis=(-2, -1))
    mean = x.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, n / (n - 1) * diff / (2.0 * n * n * np.where(mean > 0, mean, 1.0)), np.nan)


def garbe(fmr: np.ndarray, fnmr: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Gini Aggregation Rate for Biometric Equitability: alpha * G(FMR) + (1 - alpha) * G(FNMR)."""
    alpha = check_alpha(alpha, "GARBE")
    return alpha * gini(fmr) + (1.0 - alpha) * gini(fnmr)
