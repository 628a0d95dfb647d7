"""Fairness-aware evaluation: the judge of every model qfair makes.

* verification protocol (:mod:`.verification`): LFW-style 10-fold accuracy, exact or insightface grid;
* metrics (:mod:`.stats`, :mod:`.fairness`, :mod:`.rates`, :mod:`.bootstrap`, :mod:`.metrics`):
  per-group accuracy with Wilson / rule-of-three intervals, AVG/STD/SER/gap/TO, FMR/FNMR/EER/AUC at
  one global threshold, FDR/IR/GARBE, identity-bootstrap intervals;
* paired comparison (:mod:`.compare`): McNemar per group with Holm correction, STD/SER changes with
  paired bootstrap intervals, FMR drift at the reference threshold;
* backends and embedding (:mod:`.backends`, :mod:`.embed`): torch, ONNX Runtime (TensorRT plugs in).

Importing this package needs numpy only; torch/onnxruntime are imported when embedding.
Evaluation never imports qfair.train.
"""
from __future__ import annotations

from .backends import BACKENDS, Backend, OnnxRuntimeBackend, TorchBackend, make_backend
from .compare import PairedComparison, compare, compare_pair
from .embed import benchmark_fingerprint, embed
from .evaluate import evaluate, evaluate_model
from .fairness import FairnessSummary, fairness_summary, fdr, garbe, gini, inequity_rate
from .metrics import evaluate_arrays
from .rates import auc, det_curve, eer, fnmr_at_fmr, rates_at, threshold_at_fmr
from .result import EvalResult, PairData
from .stats import accuracy_interval, holm, mcnemar, wilson_interval
from .verification import kfold_accuracy, kfold_predictions

__all__ = [
    "BACKENDS", "Backend", "TorchBackend", "OnnxRuntimeBackend", "make_backend", "embed", "benchmark_fingerprint",
    "evaluate", "evaluate_model", "evaluate_arrays", "EvalResult", "PairData", "compare", "compare_pair",
    "PairedComparison", "kfold_accuracy", "kfold_predictions", "fairness_summary", "FairnessSummary", "fdr",
    "inequity_rate", "garbe", "gini", "threshold_at_fmr", "rates_at", "eer", "auc", "det_curve", "fnmr_at_fmr",
    "wilson_interval", "accuracy_interval", "mcnemar", "holm",
]
