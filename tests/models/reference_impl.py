"""An independent, functional re-implementation of the reference backbones' forward passes.

Written from the published architecture descriptions (insightface arcface_torch iresnet / mbf and the
QuantFace MobileFaceNet), it reads weights straight from a state dict by key name, so it checks both
that qfair's key names are the reference ones and that qfair's modules compute the same function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _bn(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, eps)


def _prelu(x, sd, p):
    return F.prelu(x, sd[p + ".weight"])


def _conv(x, sd, p, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[p + ".weight"], None, stride, padding, 1, groups)


def iresnet_forward(sd: dict, x: torch.Tensor, layers: tuple[int, int, int, int]) -> torch.Tensor:
    x = _prelu(_bn(_conv(x, sd, "conv1", 1, 1), sd, "bn1"), sd, "prelu")
    for s, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if i == 0 else 1
            out = _bn(x, sd, p + ".bn1")
            out = _conv(out, sd, p + ".conv1", 1, 1)
            out = _prelu(_bn(out, sd, p + ".bn2"), sd, p + ".prelu")
            out = _bn(_conv(out, sd, p + ".conv2", stride, 1), sd, p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                idt = _bn(_conv(x, sd, p + ".downsample.0", stride, 0), sd, p + ".downsample.1")
            else:
                idt = x
            x = out + idt
    x = _bn(x, sd, "bn2").flatten(1)
    x = F.linear(x, sd["fc.weight"], sd["fc.bias"])
    return _bn(x, sd, "features")


def _mbf_convblock(x, sd, p, stride=1, padding=0, groups=1, act=True):
    x = _bn(_conv(x, sd, p + ".layers.0", stride, padding, groups), sd, p + ".layers.1")
    return _prelu(x, sd, p + ".layers.2") if act else x


def _mbf_depthwise(x, sd, p, stride, groups, residual):
    y = _mbf_convblock(x, sd, p + ".layers.0")
    y = _mbf_convblock(y, sd, p + ".layers.1", stride, 1, groups)
    y = _mbf_convblock(y, sd, p + ".layers.2", act=False)
    return x + y if residual else y


def mbf_forward(sd: dict, x: torch.Tensor, blocks=(1, 4, 6, 2)) -> torch.Tensor:
    x = _mbf_convblock(x, sd, "layers.0", 2, 1)
    assert blocks[0] == 1
    x = _mbf_convblock(x, sd, "layers.1", 1, 1, 64)
    x = _mbf_depthwise(x, sd, "layers.2", 2, 128, False)
    for i in range(blocks[1]):
        x = _mbf_depthwise(x, sd, f"layers.3.layers.{i}", 1, 128, True)
    x = _mbf_depthwise(x, sd, "layers.4", 2, 256, False)
    for i in range(blocks[2]):
        x = _mbf_depthwise(x, sd, f"layers.5.layers.{i}", 1, 256, True)
    x = _mbf_depthwise(x, sd, "layers.6", 2, 512, False)
    for i in range(blocks[3]):
        x = _mbf_depthwise(x, sd, f"layers.7.layers.{i}", 1, 256, True)
    x = _mbf_convblock(x, sd, "conv_sep")
    x = _mbf_convblock(x, sd, "features.layers.0", groups=512, act=False).flatten(1)
    x = F.linear(x, sd["features.layers.2.weight"])
    return _bn(x, sd, "features.layers.3")


def _qf_block(x, sd, p, stride=1, padding=0, groups=1, act=True):
    x = _bn(_conv(x, sd, p + ".conv", stride, padding, groups), sd, p + ".bn")
    return _prelu(x, sd, p + ".prelu") if act else x


def _qf_depthwise(x, sd, p, stride, groups, residual):
    y = _qf_block(x, sd, p + ".conv")
    y = _qf_block(y, sd, p + ".conv_dw", stride, 1, groups)
    y = _qf_block(y, sd, p + ".project", act=False)
    return x + y if residual else y


def quantface_mbf_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    x = _qf_block(x, sd, "conv1", 2, 1)
    x = _qf_block(x, sd, "conv2_dw", 1, 1, 64)
    x = _qf_depthwise(x, sd, "conv_23", 2, 128, False)
    for i in range(4):
        x = _qf_depthwise(x, sd, f"conv_3.model.{i}", 1, 128, True)
    x = _qf_depthwise(x, sd, "conv_34", 2, 256, False)
    for i in range(6):
        x = _qf_depthwise(x, sd, f"conv_4.model.{i}", 1, 256, True)
    x = _qf_depthwise(x, sd, "conv_45", 2, 512, False)
    for i in range(2):
        x = _qf_depthwise(x, sd, f"conv_5.model.{i}", 1, 256, True)
    x = _qf_block(x, sd, "conv_6_sep")
    x = _qf_block(x, sd, "output_layer.conv_6_dw", groups=512, act=False).flatten(1)
    x = F.linear(x, sd["output_layer.linear.weight"])
    return _bn(x, sd, "output_layer.bn")
