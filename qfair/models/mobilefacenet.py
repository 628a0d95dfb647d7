"""MobileFaceNet in the two incompatible namings in use (README references [7]).

- ``mbf``: insightface arcface_torch naming (``layers.N...``, ``conv_sep``, ``features.layers``),
  ``scale`` widens the trunk (2 for ``mbf``, 4 with deeper blocks for ``mbf_large``).
- ``mobilefacenet``: the QuantFace / distillation-study naming (``conv1, conv2_dw, conv_23,
  conv_3.model.N, ..., conv_6_sep, output_layer.{conv_6_dw, linear, bn}``).

Both compute: conv3x3/2 -> depthwise -> [bottlenecks with residual adds] -> 1x1 conv to 512 ->
7x7 global depthwise conv (GDC) -> linear -> BN1d. (B, 3, 112, 112) -> (B, embedding_size).
"""
from __future__ import annotations

import torch
from torch import nn

from ._layers import Flatten, ResidualAdd, init_face_weights

# ---------------------------------------------------------------- arcface_torch naming ("mbf")


class ConvBlock(nn.Module):
    """conv -> BN -> PReLU (keys ``layers.0/1/2``)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """conv -> BN, no activation (keys ``layers.0/1``)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand -> depthwise kxk -> 1x1 project, with an optional residual add."""

    def __init__(self, cin: int, cout: int, residual: bool = False, kernel=(3, 3), stride=(2, 2),
                 padding=(1, 1), groups: int = 1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, cout),
        )
        self.add = ResidualAdd() if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return self.add(out, x) if self.add is not None else out


class Residual(nn.Module):
    def __init__(self, c: int, num_block: int, groups: int, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, True, kernel, stride, padding, groups)
                                      for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: (B, 512, 7, 7) -> (B, embedding_size)."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=(7, 7), groups=512),
            Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch ``mbf`` (blocks (1, 4, 6, 2), scale 2) and ``mbf_large`` (2, 8, 12, 4; scale 4)."""

    def __init__(self, num_features: int = 512, blocks=(1, 4, 6, 2), scale: int = 2):
        super().__init__()
        self.embedding_size = int(num_features)
        self.arch_blocks = tuple(int(b) for b in blocks)
        c1, c2 = 64 * scale, 128 * scale
        k3, s1, s2, p1 = (3, 3), (1, 1), (2, 2), (1, 1)
        self.layers = nn.ModuleList([ConvBlock(3, c1, k3, s2, p1)])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, k3, s1, p1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], 128, k3, s1, p1))
        self.layers.extend([
            DepthWise(c1, c1, False, k3, s2, p1, groups=128),
            Residual(c1, blocks[1], 128, k3, s1, p1),
            DepthWise(c1, c2, False, k3, s2, p1, groups=256),
            Residual(c2, blocks[2], 256, k3, s1, p1),
            DepthWise(c2, c2, False, k3, s2, p1, groups=512),
            Residual(c2, blocks[3], 256, k3, s1, p1),
        ])
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(num_features)
        init_face_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 112, 112) -> (B, D)
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))  # conv_sep: (B, 512, 7, 7)


# ---------------------------------------------------------------- QuantFace naming ("mobilefacenet")


class ConvBN(nn.Module):
    """conv -> BN [-> PReLU] with keys ``conv, bn[, prelu]`` (QuantFace ``Conv_block``/``Linear_block``)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class DepthWiseQF(nn.Module):
    """Keys ``conv, conv_dw, project``; residual add when ``residual``."""

    def __init__(self, cin: int, cout: int, residual: bool = False, kernel=(3, 3), stride=(2, 2),
                 padding=(1, 1), groups: int = 1):
        super().__init__()
        self.conv = ConvBN(cin, groups)
        self.conv_dw = ConvBN(groups, groups, kernel, stride, padding, groups=groups)
        self.project = ConvBN(groups, cout, act=False)
        self.residual = residual
        self.add = ResidualAdd() if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return self.add(out, x) if self.add is not None else out


class ResidualQF(nn.Module):
    def __init__(self, c: int, num_block: int, groups: int):
        super().__init__()
        self.model = nn.Sequential(*[DepthWiseQF(c, c, True, (3, 3), (1, 1), (1, 1), groups)
                                     for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDCQF(nn.Module):
    """Keys ``conv_6_dw, linear, bn``."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.conv_6_dw = ConvBN(512, 512, (7, 7), groups=512, act=False)
        self.conv_6_flatten = Flatten()
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))


class MobileFaceNetQF(nn.Module):
    """QuantFace / distillation-study MobileFaceNet (64/128 channels, blocks 4, 6, 2)."""

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        self.embedding_size = int(embedding_size)
        self.conv1 = ConvBN(3, 64, (3, 3), (2, 2), (1, 1))
        self.conv2_dw = ConvBN(64, 64, (3, 3), (1, 1), (1, 1), groups=64)
        self.conv_23 = DepthWiseQF(64, 64, groups=128)
        self.conv_3 = ResidualQF(64, 4, 128)
        self.conv_34 = DepthWiseQF(64, 128, groups=256)
        self.conv_4 = ResidualQF(128, 6, 256)
        self.conv_45 = DepthWiseQF(128, 128, groups=512)
        self.conv_5 = ResidualQF(128, 2, 256)
        self.conv_6_sep = ConvBN(128, 512)
        self.output_layer = GDCQF(embedding_size)
        init_face_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 112, 112) -> (B, D)
        x = self.conv2_dw(self.conv1(x))  # (B, 64, 56, 56)
        x = self.conv_3(self.conv_23(x))  # (B, 64, 28, 28)
        x = self.conv_4(self.conv_34(x))  # (B, 128, 14, 14)
        x = self.conv_5(self.conv_45(x))  # (B, 128, 7, 7)
        return self.output_layer(self.conv_6_sep(x))
