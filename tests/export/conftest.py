"""A tiny face-model stand-in (stem conv, residual block with PReLU, depthwise conv, linear head)
quantized by the real recipes, shared by the export tests."""
import pytest
import torch
from torch import nn

from qfair.models._layers import ResidualAdd


class TinyFace(nn.Module):
    """(B, 3, 112, 112) -> (B, 16); a residual block, a depthwise conv and BatchNorms like the real ones."""

    embedding_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.PReLU(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = ResidualAdd()
        self.dw = nn.Conv2d(8, 8, 7, stride=4, groups=8, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 16)
        self.features = nn.BatchNorm1d(16)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        x = self.add(y, x)
        x = self.bn3(self.dw(x))
        return self.features(self.fc(x.flatten(1)))


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth face-sized images in [-1, 1] (low-frequency patterns, like real photos)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 7, 7, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(small, size=112, mode="bilinear", align_corners=False)


def make_float(seed: int = 0) -> TinyFace:
    torch.manual_seed(seed)
    m = TinyFace()
    m.train()
    for mod in m.modules():  # realistic BatchNorm statistics instead of the init values
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
    with torch.no_grad():
        m(images(64, seed=seed + 1))
    return m.eval()


def make_quantized(bits: int, recipe: str) -> nn.Module:
    from qfair.quant import QuantConfig, quantize

    cfg = QuantConfig(bits=bits, recipe=recipe, calib_size=32, calib_batch_size=16)
    return quantize(make_float(), cfg, [images(16, seed=2), images(16, seed=3)])


@pytest.fixture(scope="session")
def tiny_float():
    return make_float()


@pytest.fixture(scope="session")
def deploy8():
    return make_quantized(8, "deploy")


@pytest.fixture(scope="session")
def deploy6():
    return make_quantized(6, "deploy")


@pytest.fixture(scope="session")
def quantface8():
    return make_quantized(8, "quantface")


@pytest.fixture(scope="session")
def parity_images():
    return images(24, seed=5)
