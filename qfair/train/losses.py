"""Distillation losses: distances between L2-normalised student and teacher embeddings.

Every loss in :data:`KD_LOSSES` is a pure function ``(student (B, D), teacher (B, D)) -> (B,)``: a
per-sample loss, so that fairness-aware weighting (``qfair.train.fairness``) can reweight samples
before the batch reduction. The batch loss is the mean of the per-sample losses.

- ``mse`` (reference, README references [5], [6]): mean over the D dimensions of
  ``(normalize(s) - normalize(t))**2``; its batch mean equals ``F.mse_loss`` over B x D (mean reduced),
  the quantity the reference recipes scale by lambda (10000 in the distillation study).
- ``cosine``: ``1 - cos(s, t)`` (= D/2 x mse for unit vectors, so it needs a smaller weight).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..utils.registry import Registry

KDLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KD_LOSSES: Registry[KDLoss] = Registry("distillation loss")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=1, eps=1e-12)


@KD_LOSSES.register("mse", aliases=("l2",))
def kd_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of unit embeddings, (B, D), (B, D) -> (B,)."""
    _check_shapes(student, teacher)
    return (_unit(student) - _unit(teacher)).pow(2).mean(dim=1)


@KD_LOSSES.register("cosine", aliases=("cos",))
def kd_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine distance ``1 - cos``, (B, D), (B, D) -> (B,)."""
    _check_shapes(student, teacher)
    return 1.0 - (_unit(student) * _unit(teacher)).sum(dim=1)


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        from ..utils.errors import ConfigError

        raise ConfigError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ in "
            "shape; use a projection (distill: projection: true) or a student with the teacher's embedding size"
        )


@dataclass
class LossParts:
    """The terms of one batch loss (tensors keep their graph; ``.item()`` them for logging)."""

    total: torch.Tensor
    kd: torch.Tensor | None = None
    margin: torch.Tensor | None = None
    kd_per_sample: torch.Tensor | None = None  # (B,) unweighted, detached


def combined_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor | None,
    *,
    kd: str | KDLoss = "mse",
    kd_weight: float = 1.0,
    head: torch.nn.Module | None = None,
    labels: torch.Tensor | None = None,
    margin_weight: float = 1.0,
    sample_weights: torch.Tensor | None = None,
) -> LossParts:
    """``margin_weight * head(student_emb, labels) + kd_weight * mean_i(w_i * kd_i)``.

    Shapes: embeddings (B, D); labels (B,) int64 with -1 for unlabelled samples (ignored by the
    head); ``sample_weights`` (B,) (fairness weighting), mean 1 by convention. The head receives the
    UNNORMALISED student embeddings (AdaFace needs their norms, README references [6]), in float32 with
    autocast disabled (also a head of the caller's that does not do so itself).
    """
    total = student_emb.new_zeros((), dtype=torch.float32)
    parts = LossParts(total=total)
    if teacher_emb is not None and kd_weight != 0:
        fn = KD_LOSSES.get(kd) if isinstance(kd, str) else kd
        per = fn(student_emb, teacher_emb.to(student_emb.device))
        parts.kd_per_sample = per.detach()
        kd_val = (per * sample_weights.to(per)).mean() if sample_weights is not None else per.mean()
        parts.kd = kd_val
        total = total + kd_weight * kd_val
    if head is not None and labels is not None and margin_weight != 0:
        mask = labels >= 0
        if bool(mask.any()):
            # float32 with autocast off (CUDA AMP): acos / the margin of a float16 cosine near 1 has Inf gradients
            with torch.autocast(student_emb.device.type, enabled=False):
                m = head(student_emb[mask].float(), labels[mask])
            parts.margin = m
            total = total + margin_weight * m
        else:  # keep the head in the graph so DDP sees a gradient (zero) for its parameters
            idle = getattr(head, "idle_step", None)
            if idle is not None:  # under DDP: the collectives the other processes' head forward runs
                idle()
            total = total + 0.0 * sum(p.sum() for p in head.parameters())
    parts.total = total
    return parts
