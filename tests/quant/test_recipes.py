"""Placement recipes: exactly where the quantizers go, BN folding, skip patterns, bit overrides."""
import pytest
import torch
from torch import nn

from qfair.config import config_from_dict
from qfair.models import create_model
from qfair.models._layers import ResidualAdd
from qfair.quant import (ActQuantizer, QuantConfig, QuantConv2d, QuantLinear, QuantPReLU, QuantResidualAdd,
                         fold_batchnorm, iter_quantizers, prepare)
from qfair.utils.errors import ConfigError, QfairError, QuantError


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_quantface_placement(tiny_r18):
    q = prepare(tiny_r18, QuantConfig(bits=6, recipe="quantface"))
    n_conv = _count(tiny_r18, nn.Conv2d)
    assert _count(q, QuantConv2d) == n_conv and _count(q, QuantLinear) == 1
    assert _count(q, nn.BatchNorm2d) == _count(tiny_r18, nn.BatchNorm2d)  # never folded
    for name, m in q.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            wq = m.weight_quantizer
            assert m.input_quantizer is None
            assert (wq.bits, wq.symmetric, wq.axis, wq.dynamic, wq.qmin, wq.qmax) == (6, False, 0, True, 0, 63)
        if isinstance(m, nn.PReLU):
            assert isinstance(m, QuantPReLU)
            assert m.output_quantizer.axis is None and not m.output_quantizer.symmetric
            assert m.weight_quantizer is not None and m.weight_quantizer.axis is None
        if isinstance(m, ResidualAdd):
            assert isinstance(m, QuantResidualAdd) and m.output_quantizer is not None and m.skip_quantizer is None
    roles = {(q.role) for _, q in iter_quantizers(q)}
    assert roles == {"weight", "output"}
    # head stays float: no activation quantizer on fc / features / bn2 / the network input
    assert all(not n.startswith(("fc.input", "features", "bn2")) for n, _ in iter_quantizers(q))
    assert tiny_r18.conv1.__class__ is nn.Conv2d  # original untouched


def test_deploy_placement_and_folding(tiny_r18, images):
    q = prepare(tiny_r18, QuantConfig(bits=8, recipe="deploy"))
    # folded: stem bn1, every block's bn2 and bn3, downsample BNs, the embedding BN1d
    left = [n for n, m in q.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert sorted(left) == sorted(["bn2"] + [f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)])
    for _, m in q.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            assert m.input_quantizer.symmetric and m.input_quantizer.axis is None
            assert m.weight_quantizer.symmetric and m.weight_quantizer.axis == 0 and m.weight_quantizer.qmin == -128
        if isinstance(m, QuantResidualAdd):
            assert m.skip_quantizer is not None and m.output_quantizer is None
    assert _count(q, QuantResidualAdd) == 8 and _count(q, QuantPReLU) == 0


def test_fold_batchnorm_is_exact(tiny_r18, images):
    import copy

    m = copy.deepcopy(tiny_r18)
    folded = fold_batchnorm(m)
    assert ("layer1.0.conv1", "layer1.0.bn2") in folded and ("fc", "features") in folded
    with torch.no_grad():
        a, b = m(images), tiny_r18(images)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4  # float32 rounding only


def test_mbf_residuals_found():
    q = prepare(create_model("mbf"), QuantConfig(recipe="deploy"))
    assert _count(q, QuantResidualAdd) == 12  # blocks 4 + 6 + 2
    q = prepare(create_model("mobilefacenet"), QuantConfig(recipe="quantface"))
    assert _count(q, QuantResidualAdd) == 12


def test_skip_and_layer_bits(tiny_r18):
    cfg = QuantConfig(bits=8, skip=("conv1", "fc"), layer_wbits={"layer1.*": 4}, layer_abits={"layer4": 6})
    q = prepare(tiny_r18, cfg)
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    assert "conv1" in q.qfair_quant["float_kept"] and "fc" in q.qfair_quant["float_kept"]
    assert isinstance(q.layer1[0].conv1, QuantConv2d)  # "conv1" matches the top-level name only
    assert q.layer1[0].conv1.weight_quantizer.bits == 4 and q.layer2[0].conv1.weight_quantizer.bits == 8
    assert q.layer4[1].add.output_quantizer.bits == 6 and q.layer3[1].add.output_quantizer.bits == 8


def test_nothing_to_quantize():
    with pytest.raises(QuantError, match="nothing to quantize"):
        prepare(nn.Sequential(nn.ReLU()), QuantConfig())
    with pytest.raises(QuantError, match="nothing to quantize"):
        prepare(nn.Sequential(nn.Conv2d(3, 3, 1)), QuantConfig(skip=("*",)))


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"\[2, 8\]"):
        QuantConfig(bits=9)
    with pytest.raises(ConfigError, match="wbits"):
        config_from_dict(QuantConfig, {"wbits": 1})
    with pytest.raises(ConfigError, match="quantface"):
        config_from_dict(QuantConfig, {"recipe": "tensorrtx"})
    with pytest.raises(ConfigError, match="percentile"):
        config_from_dict(QuantConfig, {"observer": "nope"})
    with pytest.raises(ConfigError, match="layer_wbits"):
        QuantConfig(layer_wbits={"fc": 12})
    with pytest.raises(QfairError, match="deploy"):
        prepare(nn.Conv2d(3, 3, 1), QuantConfig.__new__(QuantConfig) if False else _raw_cfg(recipe="nope"))


def _raw_cfg(**kw):
    cfg = QuantConfig()
    for k, v in kw.items():
        object.__setattr__(cfg, k, v)
    return cfg


@pytest.mark.parametrize("recipe", ["quantface", "deploy"])
@pytest.mark.parametrize("arch", ["iresnet18", "mbf", "mobilefacenet"])
def test_every_model_prepares(recipe, arch):
    kw = {"width": 8} if arch == "iresnet18" else {}
    q = prepare(create_model(arch, **kw).eval(), QuantConfig(recipe=recipe))
    assert all(isinstance(qz, ActQuantizer) for _, qz in iter_quantizers(q))
    with torch.no_grad():
        assert q(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


class _ConvFeedsBnAndAdd(nn.Module):
    """The conv output feeds its BN *and* a functional ``+``: folding the BN would change the sum."""

    def __init__(self, reuse_conv: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn2 = nn.BatchNorm2d(3)
        self.reuse_conv = reuse_conv
        g = torch.Generator().manual_seed(0)
        for bn in (self.bn, self.bn2):
            bn.running_mean.copy_(torch.randn(3, generator=g))
            bn.running_var.copy_(torch.rand(3, generator=g) + 0.5)

    def forward(self, x):
        y = self.conv(x)
        out = self.bn(y) + (self.conv(x) if self.reuse_conv else y)
        return self.bn2(self.conv2(out))  # the one exact pair


@pytest.mark.parametrize("reuse_conv", [False, True])
def test_fold_skips_conv_with_other_consumers(reuse_conv):
    import copy

    model = _ConvFeedsBnAndAdd(reuse_conv).eval()
    x = torch.randn(2, 3, 8, 8)
    m = copy.deepcopy(model)
    skipped = {}
    folded = fold_batchnorm(m, skipped=skipped)
    assert folded == [("conv2", "bn2")]
    assert set(skipped) == {"bn"}
    assert ("also feeds" in skipped["bn"]) if not reuse_conv else ("called 2 times" in skipped["bn"])
    assert isinstance(m.bn, nn.BatchNorm2d) and isinstance(m.bn2, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), atol=1e-5, rtol=1e-5)
    q = prepare(model, QuantConfig(recipe="deploy"))  # the recipe records what it did and why
    assert q.qfair_quant["bn_fold"]["folded"] == [["conv2", "bn2"]]
    assert "bn" in q.qfair_quant["bn_fold"]["not_folded"]


def test_fold_needs_a_traceable_model():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if float(y.sum()) > 0 else -y

    skipped = {}
    assert fold_batchnorm(DataDependent().eval(), skipped=skipped) == []
    assert "torch.fx could not trace" in skipped["bn"]


@pytest.mark.parametrize("key,value", [("skip", ("fc_typo",)), ("layer_wbits", {"fcc": 8}),
                                       ("layer_abits", {"layer9": 8})])
def test_a_pattern_that_matches_no_layer_is_named(tiny_r18, key, value):
    # a misspelt layer name would otherwise leave the model exactly as without it
    from qfair.quant import prepare

    named = "skip \\(--skip\\)" if key == "skip" else key  # the flag too, where the CLI has one
    with pytest.raises(QuantError, match=f"{named}: pattern '{next(iter(value))}' matches no") as e:
        prepare(tiny_r18, QuantConfig(**{key: value}))
    assert "layer1" in str(e.value)  # the model's own module names, to pick from
    if key == "layer_wbits":
        assert "did you mean 'fc'" in str(e.value)


def test_shipped_mixed_precision_config_applies_to_iresnet(tiny_r18, images):
    from pathlib import Path

    from qfair.config import load_config
    from qfair.quant import prepare
    from qfair.quant.config import QuantizeRunConfig

    cfg = load_config(QuantizeRunConfig, Path(__file__).parents[2] / "configs" / "quantize_mixed_w6a6.yaml")
    q = prepare(tiny_r18, cfg, images[:2])
    assert q.fc.weight_quantizer.bits == 8 and q.conv1.weight_quantizer.bits == 8
    assert q.layer1[0].conv1.weight_quantizer.bits == 6
