"""One training step's forward: student (+ projection) -> combined loss, as one module for DDP.

DDP synchronises the gradients of the module it wraps, so the student, the optional projection and
the margin head live in one :class:`DistillStep` whose forward returns the loss terms as tensors.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .losses import combined_loss


class DistillStep(nn.Module):
    """forward(images (B,3,H,W), teacher_emb (B,D) | None, labels (B,) | None, weights (B,) | None)
    -> (total, kd (0-d, nan if none), margin (0-d, nan if none), kd_per_sample (B,) detached)."""

    def __init__(self, student: nn.Module, projection: nn.Module | None = None, head: nn.Module | None = None,
                 *, kd: str = "mse", kd_weight: float = 1.0, margin_weight: float = 1.0) -> None:
        super().__init__()
        self.student, self.projection, self.head = student, projection, head
        self.kd, self.kd_weight, self.margin_weight = kd, float(kd_weight), float(margin_weight)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.student(images)
        return self.projection(emb) if self.projection is not None else emb

    def forward(self, images: torch.Tensor, teacher_emb: torch.Tensor | None, labels: torch.Tensor | None,
                weights: torch.Tensor | None):
        emb = self.embed(images)
        parts = combined_loss(emb, teacher_emb, kd=self.kd, kd_weight=self.kd_weight, head=self.head,
                              labels=labels, margin_weight=self.margin_weight, sample_weights=weights)
        nan = emb.new_full((), math.nan, dtype=torch.float32)
        per = parts.kd_per_sample if parts.kd_per_sample is not None else emb.new_zeros(emb.shape[0])
        kd = parts.kd.detach() if parts.kd is not None else nan
        margin = parts.margin.detach() if parts.margin is not None else nan
        return parts.total, kd, margin, per


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics fixed; affine parameters still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
