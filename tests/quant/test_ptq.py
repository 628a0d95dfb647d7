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
    with pytest.raises(QuantError, match="NaN or Inf.*calibration images") as err:
        quantize(tiny_r18, QuantConfig(recipe="quantface"), [bad])
    from qfair.utils.errors import NonFiniteError

    # the layer and role travel as attributes (training reports them as divergence), not only as text
    assert isinstance(err.value, NonFiniteError) and err.value.layer == "prelu" and err.value.role == "output"


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


def test_bias_correction_matches_every_layer_of_a_deep_model():
    # Each layer's correction must see the upstream layers already corrected: measured all at once, a
    # layer also removes the shift its corrected inputs no longer carry, and deep models drift away
    # (demo MobileFaceNet W6A6: cosine to float 0.984 without correction, 0.758 with all-at-once).
    g = torch.Generator().manual_seed(1)
    layers = []
    for cin, cout in ((3, 8), (8, 8), (8, 8), (8, 8)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.PReLU(cout)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, 0.4, generator=g)
                m.bias.normal_(0.0, 0.3, generator=g)
    x = [torch.randn(6, 3, 6, 6, generator=g) + 0.3 for _ in range(2)]
    cfg = QuantConfig(bits=3, recipe="deploy")
    q = quantize(model, cfg, x)
    bias_correction(q, x, cfg)
    conv_idx = [i for i, m in enumerate(model) if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for i in conv_idx:  # the output of layer i, float vs quantized with all corrections in place
            ref = torch.cat([model[:i + 1](b) for b in x])
            got = torch.cat([q[:i + 1](b) for b in x])
            dims = [d for d in range(ref.dim()) if d != 1]
            torch.testing.assert_close(got.mean(dims), ref.mean(dims), atol=1e-4, rtol=1e-4,
                                       msg=lambda m, i=i: f"layer {i}: {m}")


@pytest.mark.parametrize("fix", [bias_correction, bn_reestimate])
def test_one_pass_equals_a_pass_per_layer(monkeypatch, fix):
    # the fast path (all images as one batch, each layer corrected in a hook) must give what the
    # memory-bounded path (one partial pass per layer) gives
    import qfair.quant.improve as improve

    g = torch.Generator().manual_seed(2)
    layers = []
    for cin, cout in ((3, 6), (6, 6), (6, 6)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.PReLU(cout)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(6 * 5 * 5, 4)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    x = [torch.randn(5, 3, 5, 5, generator=g) + 0.3 for _ in range(3)]
    cfg = QuantConfig(bits=3, recipe="quantface")
    q = quantize(model, cfg, x)
    paths, used, one_pass = {}, [], improve._one_pass
    monkeypatch.setattr(improve, "_one_pass", lambda *a, **k: (used.append(1), one_pass(*a, **k)))
    for budget in (0, 1 << 30):
        monkeypatch.setattr(improve, "ONE_PASS_BYTES", budget)
        paths[budget] = copy.deepcopy(q)
        fix(paths[budget], x, cfg)
        assert len(used) == (budget > 0)  # the path asked for was taken
    changed = False
    for (k, a), b, before in zip(paths[0].state_dict().items(), paths[1 << 30].state_dict().values(),
                                 q.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        changed |= not torch.equal(a, before)
    assert changed


def _chan(t):  # per-channel population mean and sd over all images and positions
    dims = [d for d in range(t.dim()) if d != 1]
    return t.double().mean(dims), t.double().var(dims, unbiased=False).sqrt()


def test_bn_reestimate_transfers_the_quantization_shift():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4),
                          nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4)).eval()
    with torch.no_grad():  # training statistics that the calibration images do not share
        for bn in (model[1], model[4]):
            bn.running_mean.normal_(0.0, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
    x = [torch.randn(4, 3, 9, 9, generator=g) for _ in range(3)]
    cfg = QuantConfig(bits=3, recipe="quantface")
    q = quantize(model, cfg, x)
    assert isinstance(q[1], nn.BatchNorm2d) and isinstance(q[4], nn.BatchNorm2d)  # not folded by this recipe
    whole = copy.deepcopy(q)
    bn_reestimate(q, x, cfg)
    with torch.no_grad():
        for i in (1, 4):  # each BatchNorm normalises its quantized input as the float one normalises its own
            xf, xq = torch.cat([model[:i](b) for b in x]), torch.cat([q[:i](b) for b in x])
            mf, sf = _chan(xf)
            mq, sq = _chan(xq)
            b_f, b_q = model[i], q[i]
            s_f = (b_f.running_var.double() + b_f.eps).sqrt()
            s_q = (b_q.running_var.double() + b_q.eps).sqrt()
            torch.testing.assert_close((mq - b_q.running_mean.double()) / s_q, (mf - b_f.running_mean.double()) / s_f,
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sq / s_q, sf / s_f, atol=1e-5, rtol=1e-5)
    # statistics over all images at once: how the images are batched does not matter
    bn_reestimate(whole, [torch.cat(x)], cfg)
    for i in (1, 4):
        torch.testing.assert_close(whole[i].running_mean, q[i].running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(whole[i].running_var, q[i].running_var, atol=1e-5, rtol=1e-5)
    assert not q.training and not q[1].training


def test_chained_improvements_measure_against_the_float_model():
    # bias_correction changes the model with its quantizers off; bn_reestimate after it must still align
    # each BatchNorm with the float model, not with the bias-corrected one (demo MobileFaceNet W6A6:
    # against the corrected model the two undid each other)
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4),
                          nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4)).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.normal_(0.0, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
    x = [torch.randn(4, 3, 9, 9, generator=g) + 0.4 for _ in range(3)]
    q = quantize(model, QuantConfig(bits=3, recipe="quantface", ptq=("bias_correction", "bn_reestimate")), x)
    assert isinstance(q[1], nn.BatchNorm2d) and q[0].bias is not None and q[0].bias.abs().max() > 1e-3
    with torch.no_grad():
        for i in (1, 4):
            mf, sf = _chan(torch.cat([model[:i](b) for b in x]))
            mq, sq = _chan(torch.cat([q[:i](b) for b in x]))
            b_f, b_q = model[i], q[i]
            s_f = (b_f.running_var.double() + b_f.eps).sqrt()
            s_q = (b_q.running_var.double() + b_q.eps).sqrt()
            torch.testing.assert_close((mq - b_q.running_mean.double()) / s_q, (mf - b_f.running_mean.double()) / s_f,
                                       atol=1e-5, rtol=1e-5, msg=lambda m, i=i: f"BatchNorm {i}: {m}")
            torch.testing.assert_close(sq / s_q, sf / s_f, atol=1e-5, rtol=1e-5)


def test_reconstruction_after_an_improvement_targets_the_float_model(monkeypatch):
    import qfair.quant.reconstruction as reconstruction

    seen = {}
    brecq = reconstruction.brecq

    def spy(qmodel, batches, **kw):
        seen["reference"] = kw["reference"]
        return brecq(qmodel, batches, **kw)

    monkeypatch.setattr(reconstruction, "brecq", spy)
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Conv2d(4, 4, 3)).eval()
    x = [torch.randn(4, 3, 9, 9, generator=g) + 0.4 for _ in range(2)]
    q = quantize(model, QuantConfig(bits=3, recipe="deploy", ptq=("bias_correction", "brecq"), adaround_iters=2), x)
    ref = seen["reference"]
    with torch.no_grad():
        torch.testing.assert_close(ref(x[0]), model(x[0]))  # the float model, not the bias-corrected one
    assert not torch.equal(q[0].bias, model[0].bias)


def test_bn_reestimate_keeps_statistics_when_quantization_changes_nothing():
    # the first conv is kept in float, so quantization does not reach the BatchNorm's input: its
    # statistics are not the calibration images' (recomputing them would change them) and must stay
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4), nn.Conv2d(4, 4, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_(0.0, 1.0, generator=g)
        model[1].running_var.uniform_(0.5, 2.0, generator=g)
    x = [torch.randn(4, 3, 9, 9, generator=g) for _ in range(2)]
    cfg = QuantConfig(bits=3, recipe="quantface", skip=("0",))
    q = quantize(model, cfg, x)
    assert not any(n.startswith("0.") for n, _ in iter_quantizers(q))
    bn_reestimate(q, x, cfg)
    torch.testing.assert_close(q[1].running_mean, model[1].running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(q[1].running_var, model[1].running_var, atol=1e-6, rtol=1e-6)


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


def test_corrections_leave_layers_the_forward_never_runs():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.spare = nn.Conv2d(4, 4, 1)  # defined, never called
            self.spare_bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    g = torch.Generator().manual_seed(0)
    model = WithSpare().eval()
    x = [torch.randn(4, 3, 9, 9, generator=g) for _ in range(2)]
    cfg = QuantConfig(bits=3, recipe="quantface")
    q = quantize(model, cfg, x)
    spare_b, spare_mean = q.spare.bias.clone(), q.spare_bn.running_mean.clone()
    bias_correction(q, x, cfg)
    bn_reestimate(q, x, cfg)
    assert torch.equal(q.spare.bias, spare_b) and torch.equal(q.spare_bn.running_mean, spare_mean)
    assert not torch.equal(q.conv.bias, model.conv.bias)  # the layer that runs was corrected
