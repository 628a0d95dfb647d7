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
"""
from __future__ import annotations

import abc
import math

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

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) cosine similarities, clamped away from +-1 so acos has a gradient."""
        cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        return cos.clamp(-1 + _EPS, 1 - _EPS)

    @abc.abstractmethod
    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B,) target cosines -> (B,) margin-applied target cosines (before the scale s)."""

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(emb)  # (B, C)
        idx = labels.long().view(-1, 1)
        target = self.target_logit(cos.gather(1, idx).squeeze(1), emb)
        return cos.scatter(1, idx, target.unsqueeze(1).to(cos.dtype)) * self.s

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(emb, labels), labels.long())

    def extra_repr(self) -> str:
        c, d = self.weight.shape
        return f"embedding_size={d}, num_classes={c}, s={self.s}, m={self.m}"


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
    """ArcFace with a per-sample margin drawn from N(m, sigma) at every step (training only)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 sigma: float = 0.05) -> None:
        super().__init__(embedding_size, num_classes, s, m)
        self.sigma = float(sigma)
        self.last_margins: torch.Tensor | None = None  # (B,), for tests and logging

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            margins = torch.normal(self.m, self.sigma, size=cos_y.shape, device=cos_y.device)
        else:
            margins = torch.full_like(cos_y, self.m)
        self.last_margins = margins
        return additive_angular(cos_y, margins)


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
        """(B, D) unnormalised -> (B,) z in [-1, 1]; updates the running statistics in training."""
        norms = emb.detach().float().norm(dim=1).clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                mean, std = norms.mean(), norms.std() if norms.numel() > 1 else norms.new_zeros(())
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        z = (norms - self.batch_mean) / (self.batch_std + 1e-3)
        return (z * self.h).clamp(-1.0, 1.0)

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.margin_scaler(emb)
        theta = (torch.acos(cos_y) - self.m * z).clamp(_EPS, math.pi - _EPS)
        return torch.cos(theta) - (self.m + self.m * z)


def create_head(name: str, embedding_size: int, num_classes: int, **kw: float) -> MarginHead:
    """Build a registered head; ``kw`` overrides its defaults (s, m, sigma, h...); None values are ignored."""
    cls = HEADS.get(name)
    return cls(embedding_size, num_classes, **{k: v for k, v in kw.items() if v is not None})
