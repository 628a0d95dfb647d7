"""Quantized layers. Each is the float layer's class swapped in place for a subclass that adds
quantizer children, so parameter keys (``weight``, ``bias``) stay those of the float model and a
float checkpoint loads into the prepared model unchanged.

- ``QuantConv2d`` / ``QuantLinear``: ``weight_quantizer`` (per-output-channel, axis 0) and optional
  ``input_quantizer``;
- ``QuantPReLU``: optional slope quantizer (``weight_quantizer``) and ``output_quantizer``;
- ``QuantResidualAdd``: optional ``skip_quantizer`` (the identity input of the add, TensorRT's rule,
  README references [8]) and ``output_quantizer`` (QuantFace's "after every residual block").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models._layers import ResidualAdd
from .quantizer import ActQuantizer


def _attach(m: nn.Module, cls: type, **quantizers: ActQuantizer | None) -> nn.Module:
    """Swap ``m``'s class to ``cls`` (a subclass of it) and register the quantizer children (None allowed)."""
    if not isinstance(m, cls.__mro__[1]):
        raise TypeError(f"{cls.__name__} wraps {cls.__mro__[1].__name__}, got {type(m).__name__}")
    m.__class__ = cls
    for slot in cls.slots:
        m.register_module(slot, quantizers.get(slot))
    return m


def _q(q: ActQuantizer | None, x: Tensor) -> Tensor:
    return q(x) if q is not None else x


class QuantConv2d(nn.Conv2d):
    slots = ("weight_quantizer", "input_quantizer")
    weight_quantizer: ActQuantizer
    input_quantizer: ActQuantizer | None

    @classmethod
    def convert(cls, conv: nn.Conv2d, weight_quantizer: ActQuantizer,
                input_quantizer: ActQuantizer | None = None) -> "QuantConv2d":
        return _attach(conv, cls, weight_quantizer=weight_quantizer, input_quantizer=input_quantizer)

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        return self._conv_forward(_q(self.input_quantizer, x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(nn.Linear):
    slots = ("weight_quantizer", "input_quantizer")
    weight_quantizer: ActQuantizer
    input_quantizer: ActQuantizer | None

    @classmethod
    def convert(cls, linear: nn.Linear, weight_quantizer: ActQuantizer,
                input_quantizer: ActQuantizer | None = None) -> "QuantLinear":
        return _attach(linear, cls, weight_quantizer=weight_quantizer, input_quantizer=input_quantizer)

    def forward(self, x: Tensor) -> Tensor:  # (B, in) -> (B, out)
        return F.linear(_q(self.input_quantizer, x), self.weight_quantizer(self.weight), self.bias)


class QuantPReLU(nn.PReLU):
    slots = ("weight_quantizer", "output_quantizer")

    @classmethod
    def convert(cls, prelu: nn.PReLU, weight_quantizer: ActQuantizer | None = None,
                output_quantizer: ActQuantizer | None = None) -> "QuantPReLU":
        return _attach(prelu, cls, weight_quantizer=weight_quantizer, output_quantizer=output_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        return _q(self.output_quantizer, F.prelu(x, _q(self.weight_quantizer, self.weight)))


class QuantResidualAdd(ResidualAdd):
    slots = ("skip_quantizer", "output_quantizer")

    @classmethod
    def convert(cls, add: ResidualAdd, skip_quantizer: ActQuantizer | None = None,
                output_quantizer: ActQuantizer | None = None) -> "QuantResidualAdd":
        return _attach(add, cls, skip_quantizer=skip_quantizer, output_quantizer=output_quantizer)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return _q(self.output_quantizer, x + _q(self.skip_quantizer, skip))


QUANT_LAYERS = (QuantConv2d, QuantLinear, QuantPReLU, QuantResidualAdd)


def weight_layers(model: nn.Module):
    """Yield (name, layer) for every QuantConv2d / QuantLinear."""
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            yield name, m


@torch.no_grad()
def fold_bn_into(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> None:
    """Fold an eval-mode BatchNorm that directly follows ``conv`` into its weight and bias (in place).

    w' = w * g / sqrt(v + eps) per output channel; b' = (b - mean) * g / sqrt(v + eps) + beta.
    """
    inv = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
    factor = gamma * inv  # (Cout,)
    conv.weight.mul_(factor.reshape([-1] + [1] * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
