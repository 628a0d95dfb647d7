"""Numerical defects an independent review found, each checked against the value it must have."""
import pytest
import torch
from torch import nn

from kernels.reference import fake_quant_backward_ref
from qfair.quant.fake_quant import fake_quant, grad_scale
from qfair.quant.ptq import quantize


class _ConvPReluBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.prelu, self.bn = nn.Conv2d(3, 2, 1, bias=False), nn.PReLU(2), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.prelu(self.conv(x)))


def _bn_out_mean(model, x, channel):
    out = {}
    h = model.bn.register_forward_hook(lambda mod, a, o: out.setdefault("o", o))
    with torch.no_grad():
        model(x)
    h.remove()
    return float(out["o"][:, channel].mean())


def test_bn_reestimate_keeps_the_mean_of_a_channel_quantization_collapsed():
    """Channel 1's BN input quantizes to one code at 2 bits (variance 0): the re-estimated statistics must
    still give the float model's output mean; the variance floor (eps) used to send it to beta (0)."""
    torch.manual_seed(0)
    m = _ConvPReluBN().eval()
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.weight[0, 0], m.conv.weight[1, 1] = 1.0, 0.01
        m.bn.running_mean.copy_(torch.tensor([0.0, 0.05]))
        m.bn.running_var.copy_(torch.tensor([1.0, 1e-4]))
    x = torch.rand(64, 3, 4, 4) * 2 - 1
    want = _bn_out_mean(m, x, 1)  # the float model's, about -4.61
    plain = quantize(m, {"bits": 2, "observer": "minmax"}, [x])
    # uncorrected, channel 1's input is the constant 0: (0 - 0.05) / sqrt(1e-4 + 1e-5)
    assert _bn_out_mean(plain, x, 1) == pytest.approx(-0.05 / (1e-4 + 1e-5) ** 0.5, rel=1e-5)
    q = quantize(m, {"bits": 2, "observer": "minmax", "ptq": ["bn_reestimate"]}, [x])
    assert _bn_out_mean(q, x, 1) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("method", ["adaround", "brecq"])
def test_reconstruction_runs_under_no_grad(method):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4)).eval()
    x = torch.rand(8, 3, 6, 6) * 2 - 1
    with torch.no_grad():
        q = quantize(m, {"bits": 4, "ptq": [method], "adaround_iters": 5, "adaround_samples": 8}, [x])
        assert not torch.is_grad_enabled()  # the caller's mode is left as it was
    assert torch.isfinite(q(x)).all()


def test_reference_backward_drops_a_non_finite_gradient_at_a_clipped_element():
    """Clipped elements get gradient 0 whatever arrives (torch's clamp backward and the Triton kernel agree)."""
    x = torch.tensor([-10.0, 0.0, 0.3, 10.0])
    s, zp = torch.tensor([0.1]), torch.tensor([0.0])
    g = torch.tensor([float("inf"), 1.0, float("nan"), float("nan")])
    ref = fake_quant_backward_ref(g, x, s, zp, -8, 7, None)[0]
    xx = x.clone().requires_grad_(True)
    fake_quant(xx, s[0], zp[0], -8, 7, -1).backward(g)
    assert ref[[0, 1, 3]].tolist() == [0.0, 1.0, 0.0] and ref[2].isnan()
    assert torch.equal(ref.nan_to_num(7.0), xx.grad.nan_to_num(7.0))


def test_grad_scale_is_exactly_the_identity_forward():
    t = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = grad_scale(t, 0.2703)
    assert torch.equal(y, t)  # the old (t - t f) + t f was 1 ulp off in ~7% of the values
    y.sum().backward()
    assert torch.allclose(t.grad, torch.full_like(t, 0.2703))


@pytest.mark.parametrize("spelling", ["minmax", "MinMax", "MAX"])
def test_weight_observer_spelling_does_not_change_behaviour(spelling):
    """min/max weight ranges follow the weights (recomputed each forward, as QuantFace's QAT does) however the
    registry name is spelled."""
    from qfair.quant.config import QuantConfig
    from qfair.quant.recipes import prepare

    q = prepare(nn.Sequential(nn.Conv2d(3, 4, 3)), QuantConfig(weight_observer=spelling))
    assert q[0].weight_quantizer.dynamic is True
