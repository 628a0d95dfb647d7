"""Knowledge-distillation fine-tuning: losses, margin heads, the resumable loop, qat / distill.

``from qfair.train import fit, kd_finetune, qat, distill``. Importing this package imports torch;
``qfair/__init__`` and the CLI only import it inside the functions that need it.
"""
from __future__ import annotations

from qfair.utils.lazy import lazy_exports

_LAZY = {
    "fit": "qfair.train.loop:fit",
    "FitResult": "qfair.train.loop:FitResult",
    "TrainConfig": "qfair.train.config:TrainConfig",
    "QatConfig": "qfair.train.config:QatConfig",
    "DistillConfig": "qfair.train.config:DistillConfig",
    "KD_LOSSES": "qfair.train.losses:KD_LOSSES",
    "combined_loss": "qfair.train.losses:combined_loss",
    "HEADS": "qfair.train.heads:HEADS",
    "create_head": "qfair.train.heads:create_head",
    "GroupKDWeighter": "qfair.train.fairness:GroupKDWeighter",
    "IndexedSource": "qfair.train.batches:IndexedSource",
    "MixedSource": "qfair.train.batches:MixedSource",
    "Batch": "qfair.train.batches:Batch",
    "TeacherCache": "qfair.train.teacher:TeacherCache",
    "kd_finetune": "qfair.train.api:kd_finetune",
    "qat": "qfair.train.api:qat",
    "distill": "qfair.train.api:distill",
    "group_evaluator": "qfair.train.evaluation:group_evaluator",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
