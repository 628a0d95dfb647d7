"""The qfair::fake_quant custom op: forward = reference math, STE / LSQ gradients, opcheck, compile."""
import pytest
import torch

from qfair.quant.fake_quant import fake_quant, grad_scale
from qfair.quant.math import fake_quantize_ref


def _args(per_channel: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2
    if per_channel:
        return x, torch.tensor([0.02, 0.05, 0.01]), torch.tensor([3.0, 0.0, 10.0]), 0, 63, 1
    return x, torch.tensor(0.03), torch.tensor(31.0), 0, 63, -1


@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_matches_reference(per_channel):
    x, s, z, qmin, qmax, axis = _args(per_channel)
    y = fake_quant(x, s, z, qmin, qmax, axis)
    ref = fake_quantize_ref(x, s, z, qmin, qmax, axis if axis >= 0 else None)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("per_channel", [False, True])
def test_ste_and_lsq_gradients(per_channel):
    x, s, z, qmin, qmax, axis = _args(per_channel)
    x = x.clone().requires_grad_(True)
    s = s.clone().requires_grad_(True)
    z = z.clone().requires_grad_(True)
    g = torch.randn_like(x)
    fake_quant(x, s, z, qmin, qmax, axis).backward(g)
    # reference formulas, written out element by element
    shape = [1, -1, 1, 1] if per_channel else []
    sb, zb = s.detach().reshape(shape), z.detach().reshape(shape)
    xs = x.detach() / sb
    q = torch.round(xs) + zb
    inside = (q >= qmin) & (q <= qmax)
    assert torch.equal(x.grad, g * inside)
    ds = torch.where(inside, torch.round(xs) - xs, torch.where(q < qmin, qmin - zb, qmax - zb))
    dz = torch.where(inside, 0.0, -sb.expand_as(xs))
    red = (0, 2, 3) if per_channel else None
    exp_s = (g * ds).sum(red) if red else (g * ds).sum()
    exp_z = (g * dz).sum(red) if red else (g * dz).sum()
    torch.testing.assert_close(s.grad, exp_s)
    torch.testing.assert_close(z.grad, exp_z)
    assert inside.float().mean() < 1  # the test data does reach saturation


def test_grad_scale_identity_forward():
    t = torch.tensor(2.0, requires_grad=True)
    y = grad_scale(t, 0.25)
    assert float(y.detach()) == 2.0
    y.backward()
    assert float(t.grad) == pytest.approx(0.25)


def test_opcheck():
    x, s, z, qmin, qmax, axis = _args(True)
    torch.library.opcheck(fake_quant, (x.requires_grad_(True), s, z, qmin, qmax, axis))
    x, s, z, qmin, qmax, axis = _args(False)
    torch.library.opcheck(fake_quant, (x, s.requires_grad_(True), z, qmin, qmax, axis))


def test_torch_compile_matches_eager():
    x, s, z, qmin, qmax, axis = _args(True)

    def f(x, s):
        return (fake_quant(x * 1.5, s, z, qmin, qmax, axis) ** 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    xe, se = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    xc, sc = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    f(xe, se).backward()
    compiled(xc, sc).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(sc.grad, se.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x, s, z, qmin, qmax, axis = _args(True)
    y = fake_quant(x.cuda(), s.cuda(), z.cuda(), qmin, qmax, axis).cpu()
    assert torch.equal(y, fake_quant(x, s, z, qmin, qmax, axis))


def test_prepared_model_compiles_and_lsq_learns_scale():
    from torch import nn

    from qfair.quant import QuantConfig, iter_quantizers, quantize

    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 36, 8))
    model.eval()
    x = torch.randn(2, 3, 8, 8, generator=g)
    q = quantize(model, QuantConfig(bits=6, recipe="quantface"), [x])
    compiled = torch.compile(q, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), q(x))
    for _, qz in iter_quantizers(q):
        qz.enable_lsq()
    q(x).square().sum().backward()
    scales = [qz.scale for _, qz in iter_quantizers(q)]
    assert all(isinstance(s, nn.Parameter) and s.grad is not None for s in scales)
    assert any(float(s.grad.abs().sum()) > 0 for s in scales)
