"""Reconstruction PTQ (BRECQ blocks, AdaRound layers): units, errors, settings, config selection."""
import copy

import pytest
import torch
from torch import nn

from qfair.config import config_from_dict
from qfair.models._layers import ResidualAdd
from qfair.quant import QuantConfig, iter_quantizers, quantize
from qfair.quant.layers import QuantConv2d, weight_layers
from qfair.quant.reconstruction import ReconSettings, brecq, find_units, reconstruct, search_weight_range
from qfair.utils.errors import ConfigError, QuantError


class _Block(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c)
        self.conv2, self.bn2, self.add = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), ResidualAdd()

    def forward(self, x):
        return self.add(self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x))))), x)


class _Toy(nn.Module):
    """stem conv -> PReLU -> residual block -> pool -> fc: one block unit, two layer units."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem, self.act, self.block = nn.Conv2d(3, c, 3, padding=1), nn.PReLU(c), _Block(c)
        self.fc = nn.Linear(c, 6)

    def forward(self, x):
        return self.fc(self.block(self.act(self.stem(x))).mean((2, 3)))


def _toy_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = _Toy().eval()
    g = torch.Generator().manual_seed(seed)
    for bn in (model.block.bn1, model.block.bn2):
        bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    xs = [torch.randn(8, 3, 12, 12, generator=g) for _ in range(2)]
    return model, xs


def _mse(a, b, xs):
    with torch.no_grad():
        return float(sum(((a(x) - b(x)) ** 2).mean() for x in xs))


def test_units_blocks_and_loose_layers(tiny_r18):
    q = quantize(tiny_r18, QuantConfig(bits=4), [torch.zeros(2, 3, 112, 112)])
    units = find_units(q, "block")
    assert list(units) == ["conv1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["fc"]
    assert list(find_units(q, "layer")) == [n for n, _ in weight_layers(q)]
    with pytest.raises(QuantError, match="granularity"):
        find_units(q, "stage")


def test_brecq_reduces_block_error_vs_nearest_rounding():
    model, xs = _toy_and_data()
    cfg = QuantConfig(bits=3, recipe="quantface")
    plain = quantize(model, cfg, xs)
    q = copy.deepcopy(plain)
    report = brecq(q, xs, iters=150, samples=16, batch=4, holdout=0.0)
    assert list(report) == ["stem", "block", "fc"]
    r = report["block"]
    assert r["kept"] == "learned" and r["after"] < 0.8 * r["before"]
    assert _mse(model, q, xs) < _mse(model, plain, xs)  # end to end too, on these images
    for _, layer in weight_layers(q.block):  # weights sit on their (now static) grid
        wq = layer.weight_quantizer
        assert not wq.dynamic
        torch.testing.assert_close(wq(layer.weight), layer.weight)
    meta = q.qfair_quant["reconstruction"]
    assert meta["granularity"] == "block" and meta["units"] == 3 and meta["skipped"] == {}


def test_weight_range_search_beats_min_max_on_the_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight[:, 0, 0, 0] *= 8  # one large weight per channel: min/max wastes the 3-bit grid on it
    q = quantize(nn.Sequential(conv).eval(), QuantConfig(bits=3), [torch.randn(4, 4, 8, 8)])
    layer = q[0]
    x = torch.randn(16, 4, 8, 8)
    with torch.no_grad():
        ref = conv(x)
        before = float(((layer(x) - ref) ** 2).mean())
        ratios = search_weight_range(layer, x)
        after = float(((layer(x) - ref) ** 2).mean())
    assert after < before and bool((ratios < 1).any()) and not layer.weight_quantizer.dynamic


def test_adaround_and_brecq_selected_by_config(tiny_r18, images):
    for method in ("adaround", "brecq"):
        q = quantize(tiny_r18, QuantConfig(bits=4, ptq=(method,), adaround_iters=3, adaround_samples=4),
                     [images[:4]])
        meta = q.qfair_quant
        assert meta["ptq"] == [method]
        assert meta["reconstruction"]["granularity"] == ("layer" if method == "adaround" else "block")
        assert all(qz.fake_quant_enabled and not qz.observer_enabled for _, qz in iter_quantizers(q))
        with torch.no_grad():
            assert torch.isfinite(q(images[:2])).all()


def test_bad_reconstruction_values():
    with pytest.raises(ConfigError, match="brecq"):
        QuantConfig(ptq=("brecqq",))
    with pytest.raises(ConfigError, match="adaround_iters"):
        config_from_dict(QuantConfig, {"adaround_iters": 0})
    with pytest.raises(QuantError, match="target"):
        ReconSettings(target="teacher")
    with pytest.raises(QuantError, match="settings"):
        ReconSettings(drop=1.5)
    model, xs = _toy_and_data()
    q = quantize(model, QuantConfig(bits=4), xs)
    with pytest.raises(QuantError, match="unknown reconstruction settings"):
        reconstruct(q, xs, lr_v=1.0)


def test_local_target_and_qdrop_run():
    model, xs = _toy_and_data(1)
    q = quantize(model, QuantConfig(bits=4, recipe="deploy"), xs)
    report = reconstruct(q, xs, granularity="layer", iters=20, samples=8, target="local", drop=0.5)
    assert set(report) == {n for n, _ in weight_layers(q)}
    assert all(r["after"] <= r["before"] + 1e-12 for r in report.values())
    assert isinstance(q.stem, QuantConv2d) and q.stem.input_quantizer is not None
