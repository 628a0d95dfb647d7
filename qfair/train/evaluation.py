"""Periodic per-group evaluation during fine-tuning (via ``qfair.eval``), and what "best" means.

``group_evaluator(vset, metric)`` returns the callable :func:`qfair.train.fit` expects:
``evaluator(model) -> (score, details)`` with a higher score better. ``metric`` picks the score:
``avg`` (mean group accuracy), ``min`` (worst group), ``to`` (AVG - STD, the FRCSyn ranking),
``std`` and ``ser`` (negated: lower is better). Bootstrap intervals are off (n_bootstrap=0) to keep
evaluation cheap; the final ``qfair evaluate`` of a run computes them.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "avg": lambda d: d["avg"],
    "min": lambda d: min(d["accuracy"].values()),
    "to": lambda d: d["to"],
    "std": lambda d: -d["std"],
    "ser": lambda d: -d["ser"] if math.isfinite(d["ser"]) else -math.inf,
}


def summarize(result: Any) -> dict[str, Any]:
    """EvalResult -> small JSON-able dict: per-group accuracy (%), AVG, STD, SER, TO."""
    f = result.fairness
    return {"accuracy": {g: float(result.per_group[g]["accuracy"]) for g in result.groups},
            "avg": float(f.avg), "std": float(f.std), "ser": float(f.ser), "to": float(f.to)}


def group_evaluator(vset: Any, metric: str = "avg", *, batch_size: int = 64, flip: bool = True,
                    **eval_kw: Any) -> Callable[[nn.Module], tuple[float, dict[str, Any]]]:
    """An evaluator on ``vset`` (a VerificationSet or a spec such as ``"builtin:small"``)."""
    from ..eval import evaluate
    from ..utils.errors import ConfigError

    if metric not in SCORES:
        raise ConfigError(f"best_metric '{metric}' unknown; choose one of {', '.join(SCORES)}")
    if isinstance(vset, str):
        from ..data import open_benchmark

        vset = open_benchmark(vset)
    eval_kw.setdefault("n_bootstrap", 0)

    def run(model: nn.Module) -> tuple[float, dict[str, Any]]:
        details = summarize(evaluate(model, vset, batch_size=batch_size, flip=flip, **eval_kw))
        return SCORES[metric](details), details

    run.vset = vset  # type: ignore[attr-defined]
    return run
