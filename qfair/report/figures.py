"""PNG figures (matplotlib, imported lazily; the Agg canvas is used directly, so no global backend
is switched): per-group accuracy with intervals, per-group DET curves, accuracy against fairness."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..utils.errors import require
from ..utils.io import atomic_path


def _figure(width: float, height: float):
    require("matplotlib", "PNG figures", extra="figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path, mkdir=True) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
    return path


def accuracy_figure(results: Sequence[Any], path: str | Path) -> Path:
    """Per-group accuracy of each model (one benchmark) with 95% intervals (Wilson / rule of three)."""
    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    fig = _figure(1.6 + 1.3 * len(groups), 3.6)
    ax = fig.add_subplot(111)
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(groups))
    for i, r in enumerate(results):
        acc = np.array([r.per_group[g]["accuracy"] if g in r.per_group else np.nan for g in groups])
        ci = np.array([r.per_group[g]["accuracy_ci"] if g in r.per_group else [np.nan, np.nan] for g in groups])
        err = np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc]))
        ax.errorbar(x - 0.4 + width * (i + 0.5), acc, yerr=err, fmt="o", capsize=3, label=r.name)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results[0].benchmark}: per-group accuracy, 95% intervals")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def det_figure(results: Sequence[Any], path: str | Path, max_points: int = 2000) -> Path:
    """Per-group DET curves (FNMR against FMR, log axes), one panel per model; the dotted line is the
    model's global threshold FMR target."""
    from ..eval.rates import det_curve

    results = [r for r in results if r.pairs is not None]
    n = max(len(results), 1)
    cols = min(n, 3)
    fig = _figure(4.0 * cols, 3.4 * ((n + cols - 1) // cols))
    for i, r in enumerate(results):
        ax = fig.add_subplot((n + cols - 1) // cols, cols, i + 1)
        p = r.pairs
        for g in r.groups:
            m = p.groups == g
            _, fmr, fnmr = det_curve(p.score[m], p.issame[m])
            keep = (fmr > 0) & (fnmr > 0)
            fmr, fnmr = fmr[keep], fnmr[keep]
            if len(fmr) > max_points:
                idx = np.linspace(0, len(fmr) - 1, max_points).astype(int)
                fmr, fnmr = fmr[idx], fnmr[idx]
            ax.plot(fmr, fnmr, label=g, lw=1.2)
        ax.axvline(float(r.threshold.get("target_fmr", 1e-3)), ls=":", c="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FMR")
        ax.set_ylabel("FNMR")
        ax.set_title(f"{r.name} (dotted: target FMR)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, Path(path))


def tradeoff_figure(results: Sequence[Any], path: str | Path) -> Path:
    """Accuracy (AVG) against fairness (STD of group accuracies) across variants, bootstrap intervals."""
    fig = _figure(5.0, 3.8)
    ax = fig.add_subplot(111)
    for r in results:
        ci_a, ci_s = r.fairness_ci.get("avg"), r.fairness_ci.get("std")
        x, y = r.fairness.avg, r.fairness.std
        (point,) = ax.plot([x], [y], "o")
        # the intervals as segments, not error bars: a percentile bootstrap interval of STD (a biased
        # statistic) need not contain the point estimate, and error bars cannot be negative
        if ci_a:
            ax.plot([ci_a[0], ci_a[1]], [y, y], color=point.get_color(), lw=1, marker="|")
        if ci_s:
            ax.plot([x, x], [ci_s[0], ci_s[1]], color=point.get_color(), lw=1, marker="_")
        ax.annotate(r.name, (r.fairness.avg, r.fairness.std), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("AVG accuracy (%)  (better ->)")
    ax.set_ylabel("STD across groups (pp)  (<- fairer)")
    ax.set_title(f"{results[0].benchmark}: accuracy vs fairness")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
