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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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

    Under DDP, inside :func:`global_margin_mean` (``fit`` does it), the margin term is this process's share
    ``head_mean * n_loc * W / n_glob`` of the global batch's mean (0 on a process without labelled rows while
    others have some); outside it (one process) the term is the head's mean, bit for bit.
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
        # under DDP: the labelled rows of this process and of the global batch (None in one process)
        counts = _labelled_counts(mask)
        if bool(mask.any()):
            # float32 with autocast off (CUDA AMP): acos / the margin of a float16 cosine near 1 has Inf gradients
            with torch.autocast(student_emb.device.type, enabled=False):
                m = head(student_emb[mask].float(), labels[mask])
            if counts is not None:  # this process's share of the global batch's mean (see _labelled_counts)
                n_loc, n_glob, world = counts
                m = m * (n_loc * world / n_glob)
            parts.margin = m
            total = total + margin_weight * m
        else:  # keep the head in the graph so DDP sees a gradient (zero) for its parameters
            idle = getattr(head, "idle_step", None)
            if idle is not None:  # under DDP: the collectives the other processes' head forward runs
                idle()
            if counts is not None and counts[1] > 0:  # others have labelled rows: this process's share is 0
                parts.margin = total.new_zeros(())
            total = total + 0.0 * sum(p.sum() for p in head.parameters())
    parts.total = total
    return parts


# (W, in-place sum over the processes) while fit's forward runs under DDP (see global_margin_mean), else None
_MARGIN_DDP: ContextVar[tuple[int, Callable[[torch.Tensor], torch.Tensor]] | None] = ContextVar("_MARGIN_DDP",
                                                                                             default=None)


@contextmanager
def global_margin_mean(world: int, reduce: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, :func:`combined_loss` scales this process's margin term so that the W processes' terms
    average to the mean over the labelled rows of the GLOBAL batch (what one process with the whole batch
    computes), also when the processes hold unequal labelled counts (mixed real / synthetic batches).

    ``world``: the process count W; ``reduce``: in-place sum over the processes (e.g.
    ``qfair.train.distributed.all_reduce_sum``), one collective per margin loss, which every process runs at the
    same point. ``fit`` wraps its forward in it under DDP; with ``world`` 1 it does nothing."""
    token = _MARGIN_DDP.set((int(world), reduce) if world > 1 else None)
    try:
        yield
    finally:
        _MARGIN_DDP.reset(token)


def _labelled_counts(mask: torch.Tensor) -> tuple[int, int, int] | None:
    """(labelled rows n_loc of this process, n_glob of all processes, W) inside :func:`global_margin_mean`, else
    None. The head's loss is the mean over this process's labelled rows and DDP averages the gradients over the
    W processes: with unequal counts that weighs rows unequally (and a process without labelled rows logs NaN).
    Scaled by ``n_loc * W / n_glob``, the W terms average (as DDP's gradients and the logged ``sum / W`` do) to
    the mean over the global batch's labelled rows."""
    ctx = _MARGIN_DDP.get()
    if ctx is None:
        return None
    world, reduce = ctx
    n_loc = int(mask.sum())
    n_glob = int(reduce(torch.tensor([float(n_loc)], dtype=torch.float64, device=mask.device)).item())
    return n_loc, n_glob, world
