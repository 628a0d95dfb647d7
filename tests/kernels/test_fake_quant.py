"""Triton fake-quant kernels (interpreter) == PyTorch reference == hand-computed values / autograd."""
import pytest
import torch

from kernels import dispatch
from kernels.reference import fake_quant_backward_ref, fake_quant_forward_ref


def _case(shape, axis, bits=6, symmetric=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    c = 1 if axis is None or axis < 0 else shape[axis]
    scale = torch.rand(c, generator=g) * 0.1 + 0.02
    if symmetric:
        qmin, qmax, zp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, torch.zeros(c)
    else:
        qmin, qmax = 0, 2 ** bits - 1
        zp = torch.randint(0, 2 ** bits, (c,), generator=g).float()
    # exact ties (x / s = k + 0.5) exercise round-half-to-even
    flat = x.view(-1)
    flat[:7] = (torch.arange(7) - 3 + 0.5) * scale.reshape(-1)[0]
    return x, scale, zp, qmin, qmax


def test_reference_hand_values():
    x = torch.tensor([-1.0, 0.05, 0.25, 0.35, 10.0])
    y = fake_quant_forward_ref(x, torch.tensor([0.1]), torch.tensor([0.0]), -4, 3, axis=None)
    # -1/0.1=-10 -> -4; 0.5 -> 0 (half to even); 2.5 -> 2; 3.5 -> 3 (clip); 100 -> 3
    assert torch.allclose(y, torch.tensor([-0.4, 0.0, 0.2, 0.3, 0.3]))
    gx, gs, gzp = fake_quant_backward_ref(torch.ones(5), x, torch.tensor([0.1]), torch.tensor([0.0]), -4, 3, None)
    assert gx.tolist() == [0, 1, 1, 0, 0]  # 3.5 rounds to 4 > qmax: clipped
    assert gs.item() == pytest.approx(-4 + (0 - 0.5) + (2 - 2.5) + 3 + 3, abs=1e-5)
    assert gzp.item() == pytest.approx(-0.1 * 3)


def test_reference_backward_matches_autograd():
    """The LSQ formulas equal autograd through a round-with-STE formulation."""
    x, s, zp, qmin, qmax = _case((4, 3, 5), axis=1)
    s = s.clone().requires_grad_(True)
    zpv = zp.clone().requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    v = xx / s.view(1, -1, 1)
    r = v + (torch.round(v) - v).detach()
    q = torch.clamp(r + zpv.view(1, -1, 1), qmin, qmax)
    y = (q - zpv.view(1, -1, 1)) * s.view(1, -1, 1)
    g = torch.randn_like(y)
    y.backward(g)
    gx, gs, gzp = fake_quant_backward_ref(g, x, s.detach(), zp, qmin, qmax, axis=1)
    assert torch.allclose(gx, xx.grad) and torch.allclose(gs, s.grad, atol=1e-5)
    assert torch.allclose(gzp, zpv.grad, atol=1e-5)


@pytest.mark.parametrize("shape,axis,symmetric,bits", [((8, 3, 3, 3), 0, True, 8), ((2, 5, 7, 3), 1, False, 6),
                                                        ((1100,), -1, False, 8), ((3, 4), 1, True, 4)])
def test_triton_equals_reference(triton_kernels, shape, axis, symmetric, bits):
    fq, _ = triton_kernels
    x, s, zp, qmin, qmax = _case(shape, axis, bits, symmetric)
    y = fq.fake_quant_forward_triton(x, s, zp, qmin, qmax, axis)
    assert torch.equal(y, fake_quant_forward_ref(x, s, zp, qmin, qmax, axis))
    g = torch.randn_like(x)
    got = fq.fake_quant_backward_triton(g, x, s, zp, qmin, qmax, axis)
    want = fake_quant_backward_ref(g, x, s, zp, qmin, qmax, axis)
    assert torch.equal(got[0], want[0])
    assert torch.allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert torch.allclose(got[2], want[2], rtol=1e-5, atol=1e-5)


def test_dispatch_falls_back_on_cpu(monkeypatch):
    monkeypatch.delenv("QFAIR_KERNELS", raising=False)
    assert dispatch.kernel_backend(torch.zeros(1)) == "reference"
    monkeypatch.setenv("QFAIR_KERNELS", "reference")
    assert dispatch.kernel_backend(torch.zeros(1)) == "reference"


def test_lsq_autograd_through_dispatch(triton_kernels, monkeypatch):
    x, s, zp, qmin, qmax = _case((6, 4), axis=0, bits=8, symmetric=True)
    grads = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("QFAIR_KERNELS", mode)
        xx, ss = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
        dispatch.fake_quant_lsq(xx, ss, zp, qmin, qmax, 0, grad_factor=0.5).pow(2).sum().backward()
        grads[mode] = (xx.grad, ss.grad)
    assert torch.equal(grads["reference"][0], grads["triton"][0])
    assert torch.allclose(grads["reference"][1], grads["triton"][1], atol=1e-5)


def test_matches_the_quant_op():
    """Second implementation: qfair.quant's custom op (forward and its autograd formula)."""
    from qfair.quant.fake_quant import fake_quant

    x, s, zp, qmin, qmax = _case((5, 4, 3, 3), axis=0, bits=6)
    ss = s.clone().requires_grad_(True)
    zz = zp.clone().requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    y = fake_quant(xx, ss, zz, qmin, qmax, 0)
    assert torch.equal(y, fake_quant_forward_ref(x, s, zp, qmin, qmax, 0))
    g = torch.randn_like(x)
    y.backward(g)
    gx, gs, gzp = fake_quant_backward_ref(g, x, s, zp, qmin, qmax, 0)
    assert torch.equal(gx, xx.grad)
    assert torch.allclose(gs, ss.grad, atol=1e-5) and torch.allclose(gzp, zz.grad, atol=1e-5)
