"""Model facts for ``qfair info``: parameters, MACs at 112x112, embedding size, layer counts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ModelSummary:
    arch: str
    params: int
    macs: int
    embedding_size: int
    layer_counts: dict[str, int] = field(default_factory=dict)
    depthwise_convs: int = 0


def count_macs(model: nn.Module, input_size: tuple[int, int] = (112, 112)) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one image (BN/PReLU/adds not counted)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += int(out.shape[1] * out.shape[2] * out.shape[3] * k)

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += int(m.in_features * m.out_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def summarize(model: nn.Module, arch: str = "") -> ModelSummary:
    # a layer is a leaf module, or a quantized layer whose only children are its quantizers
    # (QuantConv2d holds weight_quantizer / input_quantizer); the quantizers are counted as well
    counts = Counter(type(m).__name__ for m in model.modules()
                     if all(type(c).__name__.endswith("Quantizer") for c in m.children())
                     and type(m).__name__ not in ("Identity", "Dropout"))
    dw = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels)
    return ModelSummary(
        arch=arch or getattr(model, "qfair_arch", {}).get("name", type(model).__name__),
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model),
        embedding_size=int(getattr(model, "embedding_size", 0)),
        layer_counts=dict(sorted(counts.items())),
        depthwise_convs=dw,
    )
