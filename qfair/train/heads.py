"""Margin-loss heads: ArcFace, CosFace, ElasticArcFace, AdaFace (registry :data:`HEADS`).

A head owns the class-centre matrix W (C, D). ``head(emb (B, D), labels (B,)) -> scalar`` is the
cross-entropy of the margin logits; ``head.logits(emb, labels) -> (B, C)`` exposes the logits for
tests. Embeddings come in UNNORMALISED: every head normalises them itself, and AdaFace uses their
norms as an image-quality proxy (README references [6]: feeding unit vectors silently turns AdaFace
into CosFace).

Formulas, with cos_j = <e/|e|, W_j/|W_j|> and theta_j = acos(cos_j), for the target class y:
- ArcFace:        s * cos(theta_y + m), and s * (cos_y - m sin m) where theta_y > pi - m (the original
                  ArcFace's rule; past it cos(theta_y + m) would rise as theta_y grows)
- CosFace:        s * (cos_y - m)
- ElasticArcFace: as ArcFace with m_i ~ N(m, sigma) per sample
- AdaFace:        s * (cos(clip(theta_y - m * z_i, eps, pi - eps)) - (m + m * z_i)), with
  z_i = clip(h * (|e_i| - mu) / (sigma + eps), -1, 1) and (mu, sigma) an EMA (t_alpha) of the batch
  mean and std of the (detached, clipped) norms. Non-target logits are s * cos_j for every head.

Precision: the logits and the loss are computed in float32 with autocast disabled, whatever the caller's
autocast region (CUDA AMP): in float16 the clamp to +-(1 - 1e-7) rounds to +-1, acos' gradient there is
infinite, and the grad scaler would skip every such step silently.

Distributed training (:meth:`MarginHead.set_distributed`, called by ``fit`` under DDP): the per-sample
margins of ElasticArcFace are the slice of ONE draw over the labelled samples of the global batch that
belongs to this process (every process consumes the same random numbers, and together they use exactly
the margins one process with the whole batch would draw), and AdaFace's batch mean / std of the norms
are those of the global batch. Both sum a few numbers over the processes inside the forward; a process
whose batch has no labelled sample calls :meth:`MarginHead.idle_step` instead, so every process takes
part in the same collectives.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.registry import Registry

HEADS: Registry[type] = Registry("margin head")
_EPS = 1e-7


class MarginHead(nn.Module, abc.ABC):
    """Base class: class centres W (C, D) and cross-entropy over ``logits``."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            from ..utils.errors import ConfigError

            raise ConfigError(f"a margin head needs at least 2 classes (identities), got {num_classes}")
        self.s, self.m = float(s), float(m)
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        # (rank, world, in-place sum over the processes) under DDP, else None (see set_distributed)
        self._dist: tuple[int, int, Callable[[torch.Tensor], torch.Tensor]] | None = None

    def set_distributed(self, rank: int = 0, world: int = 1,
                        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Make batch-level statistics and random draws those of the global batch of a ``world``-process run
        (``reduce``: in-place sum over the processes, e.g. ``qfair.train.distributed.all_reduce_sum``). With
        ``world`` 1 (the default) the head is a one-process head again."""
        self._dist = (int(rank), int(world), reduce) if world > 1 and reduce is not None else None

    def idle_step(self) -> None:
        """Called instead of the forward on a process whose batch has no labelled sample, so that it takes part
        in the collectives the other processes' forward runs (no-op for heads without any)."""

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) float32 cosine similarities, clamped away from +-1 so acos has a gradient."""
        with _fp32(emb):
            cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
            return cos.clamp(-1 + _EPS, 1 - _EPS)

    @abc.abstractmethod
    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B,) target cosines -> (B,) margin-applied target cosines (before the scale s)."""

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, D), (B,) -> (B, C) float32 logits (computed in float32 inside any autocast region)."""
        with _fp32(emb):
            cos = self.cosines(emb)  # (B, C)
            idx = labels.long().view(-1, 1)
            target = self.target_logit(cos.gather(1, idx).squeeze(1), emb.float())
            return cos.scatter(1, idx, target.unsqueeze(1).to(cos.dtype)) * self.s

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with _fp32(emb):
            return F.cross_entropy(self.logits(emb, labels), labels.long())

    def extra_repr(self) -> str:
        c, d = self.weight.shape
        return f"embedding_size={d}, num_classes={c}, s={self.s}, m={self.m}"


def _fp32(t: torch.Tensor) -> torch.autocast:
    """Autocast off for ``t``'s device type: the head's arithmetic stays float32 inside an AMP region."""
    return torch.autocast(t.device.type, enabled=False)


def additive_angular(cos_y: torch.Tensor, m: float | torch.Tensor) -> torch.Tensor:
    """ArcFace's target logit cos(theta + m), (B,) -> (B,), as the original ArcFace (insightface
    ``ArcMarginProduct``, easy_margin off): where theta + m would pass pi, cos(theta + m) would rise again
    as theta grows (a worse sample would get a larger logit), so there ``cos theta - m sin(m)`` is used,
    which keeps falling. ``m``: one margin or one per sample (B,)."""
    m = torch.as_tensor(m, dtype=cos_y.dtype, device=cos_y.device)
    past_pi = cos_y <= torch.cos(torch.pi - m)  # theta >= pi - m
    return torch.where(past_pi, cos_y - torch.sin(m) * m, torch.cos(torch.acos(cos_y) + m))


@HEADS.register("arcface")
class ArcFace(MarginHead):
    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_size, num_classes, s, m)

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return additive_angular(cos_y, self.m)


@HEADS.register("cosface")
class CosFace(MarginHead):
    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, s, m)

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m


@HEADS.register("elasticarcface", aliases=("elastic", "elasticface", "elastic-arcface"))
class ElasticArcFace(MarginHead):
    """ArcFace with a per-sample margin drawn from N(m, sigma) at every step (training only), from the global
    torch RNG of the embeddings' device (saved in training checkpoints). Under DDP (:meth:`set_distributed`)
    every process draws the margins of all labelled samples of the global batch and keeps its own slice:
    the processes' margins differ, and are the ones a single process with the whole batch would use."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 sigma: float = 0.05) -> None:
        super().__init__(embedding_size, num_classes, s, m)
        self.sigma = float(sigma)
        self.last_margins: torch.Tensor | None = None  # (B,), for tests and logging

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            margins = self._draw(cos_y.shape[0], cos_y.device)
        else:
            margins = torch.full_like(cos_y, self.m)
        self.last_margins = margins
        return additive_angular(cos_y, margins)

    def idle_step(self) -> None:
        if self.training and self.sigma > 0:
            self._draw(0, self.weight.device)

    def _draw(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) margins of this process's n labelled samples."""
        if self._dist is None:
            return torch.normal(self.m, self.sigma, size=(n,), device=device)
        rank, world, reduce = self._dist
        counts = torch.zeros(world, dtype=torch.float64, device=device)
        counts[rank] = n
        counts = reduce(counts).long().tolist()  # labelled samples of every process, in global batch order
        lo = sum(counts[:rank])
        return torch.normal(self.m, self.sigma, size=(sum(counts),), device=device)[lo:lo + n]


@HEADS.register("adaface")
class AdaFace(MarginHead):
    """Quality-adaptive margin from the feature norms (Kim et al., CVPR 2022)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4,
                 h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__(embedding_size, num_classes, s, m)
        self.h, self.t_alpha = float(h), float(t_alpha)
        # Initial values of the running norm statistics as in the AdaFace paper's implementation.
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) unnormalised -> (B,) z in [-1, 1]; updates the running statistics in training (under DDP
        with the mean and std of the norms of the global batch)."""
        norms = emb.detach().float().norm(dim=1).clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                if self._dist is None:
                    mean, std = norms.mean(), norms.std() if norms.numel() > 1 else norms.new_zeros(())
                    self._update(mean, std)
                else:
                    self._global_update(norms)
        z = (norms - self.batch_mean) / (self.batch_std + 1e-3)
        return (z * self.h).clamp(-1.0, 1.0)

    def idle_step(self) -> None:
        if self.training and self._dist is not None:
            with torch.no_grad():
                self._global_update(self.batch_mean.new_zeros(0))

    def _update(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
        self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)

    def _global_update(self, norms: torch.Tensor) -> None:
        """EMA update with the mean and (unbiased) std of the norms of every process (count, sum, sum of squares
        summed over the processes, in float64)."""
        x = norms.double()
        sums = torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])
        n, s1, s2 = self._dist[2](sums).tolist()
        if n < 1:
            return
        mean = s1 / n
        std = math.sqrt(max(s2 - s1 * mean, 0.0) / (n - 1)) if n > 1 else 0.0
        self._update(self.batch_mean.new_tensor(mean), self.batch_std.new_tensor(std))

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.margin_scaler(emb)
        theta = (torch.acos(cos_y) - self.m * z).clamp(_EPS, math.pi - _EPS)
        return torch.cos(theta) - (self.m + self.m * z)


def create_head(name: str, embedding_size: int, num_classes: int, **kw: float) -> MarginHead:
    """Build a registered head; ``kw`` overrides its defaults (s, m, sigma, h...); None values are ignored."""
    cls = HEADS.get(name)
    return cls(embedding_size, num_classes, **{k: v for k, v in kw.items() if v is not None})
