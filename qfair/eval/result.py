"""Result containers of the evaluator: :class:`EvalResult` (one model on one benchmark) and the
per-pair arrays it keeps for paired comparisons (:class:`PairData`, not serialised)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .fairness import FairnessSummary


@dataclass
class PairData:
    """Per-pair arrays of one evaluation. ``score`` = cosine similarity (P,), ``dist`` = squared L2
    distance of unit embeddings (P,), ``correct`` = k-fold prediction correct (P,) bool."""

    dist: np.ndarray
    score: np.ndarray
    issame: np.ndarray
    groups: np.ndarray
    pair_ids: np.ndarray | None
    folds: np.ndarray
    correct: np.ndarray

    def fingerprint(self) -> str:
        """Identifies the pair list (labels, groups, folds, identities): equal for the same benchmark."""
        h = hashlib.sha256()
        for arr in (self.issame.astype(np.uint8), self.folds.astype(np.int64)):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\0".join(self.groups.tolist()).encode())
        if self.pair_ids is not None:
            h.update("\0".join(self.pair_ids.reshape(-1).tolist()).encode())
        return h.hexdigest()[:16]


@dataclass
class EvalResult:
    """One model evaluated on one verification benchmark.

    Accuracies are percent; rates (FMR, FNMR, EER) are fractions; intervals are ``[lo, hi]``.
    ``per_group[g]`` holds n_pairs, n_genuine, n_impostor, accuracy, accuracy_fold_std,
    accuracy_ci (Wilson or rule of three), accuracy_ci_method, accuracy_ci_bootstrap, fmr, fnmr,
    fmr_ci, fnmr_ci (bootstrap), fnmr_at_fmr, eer, auc, fold_thresholds.
    """

    name: str
    benchmark: str
    groups: list[str]
    per_group: dict[str, dict[str, Any]]
    overall: dict[str, Any]
    fairness: FairnessSummary
    fairness_ci: dict[str, list[float]]
    threshold: dict[str, Any]
    rate_fairness: dict[str, Any]
    bootstrap: dict[str, Any]
    settings: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pairs: PairData | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """One line a notebook can show: name, benchmark, per-group accuracy, AVG / STD / SER (``to_dict``
        has everything)."""
        f = self.fairness
        groups = ", ".join(f"{g} {self.per_group[g]['accuracy']:.2f}" for g in self.groups)
        return (f"EvalResult({self.name!r} on {self.benchmark!r}: {groups}; AVG {f.avg:.2f}, STD {f.std:.2f}, "
                f"SER {f.ser:.2f})")

    def accuracies(self) -> dict[str, float]:
        """Group -> accuracy in percent, in group order."""
        return {g: self.per_group[g]["accuracy"] for g in self.groups}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (via ``qfair.utils.io.to_json``, which writes inf/nan as strings)."""
        return {
            "name": self.name,
            "benchmark": self.benchmark,
            "meta": self.meta,
            "groups": list(self.groups),
            "per_group": self.per_group,
            "overall": self.overall,
            "fairness": self.fairness.to_dict(),
            "fairness_ci": self.fairness_ci,
            "threshold": self.threshold,
            "rate_fairness": self.rate_fairness,
            "bootstrap": self.bootstrap,
            "settings": self.settings,
            "notes": list(self.notes),
            "pairs_fingerprint": self.pairs.fingerprint() if self.pairs is not None else None,
        }
