"""Parameter-free building blocks shared by the backbones.

``ResidualAdd`` makes the residual sum a module, so quantization recipes can put a quantizer on the
skip input (TensorRT runs an Add in int8 only when both inputs are quantized; README references [8]).
It has no parameters, so state-dict keys stay identical to the reference implementations.
"""
from __future__ import annotations

import torch
from torch import nn


class ResidualAdd(nn.Module):
    """``out = x + skip``; ``skip`` is the identity branch."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return x + skip


class Flatten(nn.Module):
    """(B, C, 1, 1) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


def init_face_weights(model: nn.Module) -> None:
    """Kaiming init for convs and linears, unit/zero BatchNorm (as the reference backbones do)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
