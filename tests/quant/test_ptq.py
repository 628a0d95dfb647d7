"""PTQ: calibration, frozen ranges, bad input, improvements, exact save / load."""
import copy

import pytest
import torch
from torch import nn

from qfair.quant import (QuantConfig, iter_quantizers, load_quantized, quantize, save_quantized)
from qfair.quant.improve import bias_correction, bn_reestimate
from qfair.utils.errors import QuantError


def _cos(a, b):
    return float(nn.functional.cosine_similarity(a, b).mean())


@pytest.mark.parametrize("recipe", ["quantface", "deploy"])
def test_quantize_close_to_float_and_frozen(tiny_r18, images, recipe):
    before = copy.deepcopy(tiny_r18.state_dict())
    q = quantize(tiny_r18, QuantConfig(bits=8, recipe=recipe), [images[:4], (images[4:], torch.zeros(4))])
    with torch.no_grad():
        assert _cos(q(images), tiny_r18(images)) > 0.99
        scales = {n: qz.scale.clone() for n, qz in iter_quantizers(q) if not qz.dynamic}
        q(images * 3)  # new data must not move frozen ranges
    assert all(torch.equal(qz.scale, scales[n]) for n, qz in iter_quantizers(q) if n in scales)
    assert all(torch.equal(v, tiny_r18.state_dict()[k]) for k, v in before.items())  # input model untouched
    assert q.qfair_quant["calibrated"] and q.qfair_quant["calib_images"] == 8


def test_nan_names_the_layer(tiny_r18, images):
    bad = images[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(QuantError, match="'conv1'"):
        quantize(tiny_r18, QuantConfig(recipe="deploy"), [bad])
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(QuantError, match="NaN or Inf"):
        quantize(tiny_r18, QuantConfig(recipe="quantface"), [bad])


def test_empty_calibration_set(tiny_r18):
    with pytest.raises(QuantError, match="empty"):
        quantize(tiny_r18, QuantConfig(), [])
    with pytest.raises(QuantError, match="calibration batch"):
        quantize(tiny_r18, QuantConfig(), [torch.zeros(3, 112, 112)])


def test_bias_correction_matches_float_channel_means():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)).eval()
    x = [torch.randn(4, 3, 9, 9, generator=g) + 0.5 for _ in range(2)]
    cfg = QuantConfig(bits=3, recipe="deploy")
    q = quantize(model, cfg, x)
    bias_correction(q, x, cfg)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x]).mean((0, 2, 3))
        got = torch.cat([q(b) for b in x]).mean((0, 2, 3))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bn_reestimate_uses_quantized_statistics():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4)).eval()
    x = [torch.randn(4, 3, 9, 9, generator=g) for _ in range(3)]
    cfg = QuantConfig(bits=3, recipe="quantface")
    q = quantize(model, cfg, x)
    bn_reestimate(q, x, cfg)
    with torch.no_grad():
        conv_out = torch.cat([q[0](b) for b in x])  # quantized conv output = what BN now sees
    torch.testing.assert_close(q[1].running_mean, conv_out.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert not q.training and not q[1].training


@pytest.mark.parametrize("recipe,ptq", [("deploy", ("bias_correction",)),
                                        ("quantface", ("bn_reestimate", "bias_correction"))])
def test_save_load_reproduces_outputs(tiny_r18, images, tmp_path, recipe, ptq):
    cfg = QuantConfig(bits=6, recipe=recipe, observer="percentile", ptq=ptq)
    q = quantize(tiny_r18, cfg, [images[:2], images[2:4]])
    save_quantized(q, tmp_path / "run")
    for f in ("model.pt", "quant.json", "config.yaml"):
        assert (tmp_path / "run" / f).exists()
    import json

    doc = json.loads((tmp_path / "run" / "quant.json").read_text())
    assert doc["arch"]["name"] == "iresnet18" and doc["recipe"] == recipe
    one = doc["quantizers"][0]
    assert {"layer", "bits", "scale", "zero_point", "observer"} <= set(one)
    r = load_quantized(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(r(images[:2]), q(images[:2]))


def test_adaround_beats_nearest_rounding():
    from qfair.quant.adaround import adaround

    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, bias=True)).eval()
    x = [torch.randn(4, 4, 6, 6, generator=g) for _ in range(2)]
    cfg = QuantConfig(bits=3, recipe="deploy")
    q = quantize(model, cfg, x)
    report = adaround(q, x, iters=60, samples=8)
    r = report["0"]
    assert r["adaround"] < r["nearest"]
    wq = q[0].weight_quantizer
    assert not wq.dynamic
    torch.testing.assert_close(wq(q[0].weight), q[0].weight)  # weights sit on the grid
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x])
        got = torch.cat([q(b) for b in x])
    assert got.shape == ref.shape


def test_unreached_quantizer_is_named():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(QuantError, match="'unused'"):
        quantize(Branchy(), QuantConfig(recipe="deploy"), [torch.zeros(1, 3, 4, 4)])
