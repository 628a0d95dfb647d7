"""``evaluate``: one model (module, backend, run folder, checkpoint or .onnx) on one verification set."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .embed import check_pairs, embed
from .metrics import check_layout, evaluate_arrays
from .result import EvalResult
from .targets import load_target
from .verification import squared_distance


def evaluate(target: Any, vset: Any, *, backend: str | None = None, arch: str | None = None,
             name: str | None = None, flip: bool = True, batch_size: int = 64,
             cache_dir: str | os.PathLike | None = None, mode: str = "exact", n_folds: int = 10,
             target_fmr: float = 1e-3, threshold: float | None = None, alpha: float = 0.5, ddof: int = 1,
             n_bootstrap: int = 1000, seed: int = 0, groups: Sequence[str] | None = None,
             meta: dict | None = None) -> EvalResult:
    """Embed ``vset`` (a VerificationSet or a benchmark spec like ``"builtin:small"``) with ``target``
    and compute every metric: per-group k-fold accuracy with intervals, AVG/STD/SER/gap/TO, per-group
    rates at one global threshold (``threshold`` inherited, else chosen at ``target_fmr``), FDR/IR/GARBE
    and identity-bootstrap intervals. See :func:`qfair.eval.metrics.evaluate_arrays`.
    """
    from .fairness import check_alpha

    check_alpha(alpha, "evaluate")  # before the (slow) embedding, as the CLI's config check does
    if isinstance(vset, (str, os.PathLike)):
        from ..data import open_benchmark

        vset = open_benchmark(str(vset))
    elif not all(hasattr(vset, a) for a in ("pairs", "issame", "groups", "images")):
        from ..utils.errors import DataError

        raise DataError(f"evaluate: vset must be a VerificationSet (qfair.data.open_benchmark) or a benchmark spec "
                        f"such as 'builtin:small' or 'rfw:/data/RFW', got {type(vset).__name__}")
    be, display, model_meta = load_target(target, arch=arch, backend=backend, name=name)
    pairs = check_pairs(vset)
    # the benchmark's own folds (RFW, builtin), else n_folds contiguous folds per group
    own_folds = None if (getattr(vset, "meta", None) or {}).get("default_folds") else getattr(vset, "folds", None)
    # a benchmark that cannot be evaluated fails here, not after every image was embedded
    check_layout(vset.issame, vset.groups, own_folds, benchmark=vset.name, n_folds=n_folds,
                 threshold=threshold, groups_wanted=groups)
    emb = embed(be, vset, flip=flip, batch_size=batch_size, cache_dir=cache_dir)
    # float32 unit embeddings, squared L2 as the reference code computes it (README references [3])
    dist = squared_distance(emb[pairs[:, 0]], emb[pairs[:, 1]]).astype(np.float64)
    bench_meta = getattr(vset, "meta", {}) or {}
    full_meta = {**model_meta, **(meta or {}), "flip": flip}
    if bench_meta.get("synthetic"):
        full_meta["benchmark_note"] = "synthetic benchmark (built-in); real conclusions need RFW"
    result = evaluate_arrays(dist, vset.issame, vset.groups, pair_ids=getattr(vset, "pair_ids", None),
                             folds=own_folds, name=display, benchmark=vset.name, meta=full_meta,
                             mode=mode, n_folds=n_folds, target_fmr=target_fmr, threshold=threshold, alpha=alpha,
                             ddof=ddof, n_bootstrap=n_bootstrap, seed=seed, groups_wanted=groups)
    if full_meta.get("target_note"):  # e.g. a quantized graph without its export report: bits unknown
        result.notes.insert(0, str(full_meta["target_note"]))
    return result


evaluate_model = evaluate  # name used in the shared contract
