"""qfair::fake_quant's fast paths are bit for bit the plain ONNX formula.

The op computes ``clamp(round(x / s), qmin - z, qmax - z) * s + 0`` instead of
``(clamp(round(x / s) + z, qmin, qmax) - z) * s``, and its per-tensor CPU backward builds the STE mask from
float bounds on ``x`` instead of dividing again. These tests compare both with the plain formula on realistic
tensors, exact half-integer ties next to and at the saturation limits, special values, and every float next
to the mask's bounds; bitwise (``view(int)``), so a ``-0.0`` for ``+0.0`` fails too.
"""
import numpy as np
import pytest
import torch

from qfair.quant.fake_quant import _x_bounds, fake_quant

RANGES = [(0, 255), (-128, 127), (-127, 127), (0, 63), (-8, 7), (0, 3)]


def _plain(x, s, z, qmin, qmax, axis):
    """The ONNX QuantizeLinear -> DequantizeLinear formula, step by step, and its clipping mask."""
    if axis >= 0:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    s, z = s.to(x.dtype), z.to(x.dtype)
    q = torch.round(x / s) + z
    return (torch.clamp(q, qmin, qmax) - z) * s, (q >= qmin) & (q <= qmax)


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _assert_bitwise(y, ref):
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(y), nan)
    assert torch.equal(_bits(y)[~nan], _bits(ref)[~nan])


def _qparams(g, qmin, qmax, channels=None):
    shape = (channels,) if channels else ()
    s = (torch.rand(shape, generator=g) * 0.05 + 1e-3).float()
    if qmin < 0:
        z = torch.zeros(shape)
    else:
        z = torch.randint(qmin, qmax + 1, shape, generator=g).float()
    return s, z


def _ties(s, z, qmin, qmax, n=64, dtype=np.float32):
    """Floats x with x / s exactly a half-integer (a rounding tie), around and at both saturation limits."""
    s = dtype(s)
    out = []
    for k in list(range(int(qmin - z) - 3, int(qmin - z) + 3)) + list(range(int(qmax - z) - 3, int(qmax - z) + 3)) \
            + list(range(-n // 2, n // 2)):
        target = dtype(k + 0.5)
        v = dtype(target * s)
        for _ in range(8):  # step to a float whose quotient is exactly the tie, if one exists nearby
            d = v / s
            if d == target:
                out.append(v)
                break
            v = np.nextafter(v, dtype(np.inf) if d < target else dtype(-np.inf))
    return out


@pytest.mark.parametrize("qmin,qmax", RANGES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_bitwise_equal_to_plain_formula(qmin, qmax, per_channel):
    g = torch.Generator().manual_seed(qmax - qmin)
    for trial in range(4):
        x = torch.randn(8, 6, 17, 19, generator=g) * (0.5 + 2 * trial)  # wide enough to saturate
        x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, -1e-30, 1e-30])
        s, z = _qparams(g, qmin, qmax, 6 if per_channel else None)
        axis = 1 if per_channel else -1
        _assert_bitwise(fake_quant(x, s, z, qmin, qmax, axis), _plain(x, s, z, qmin, qmax, axis)[0])
    # float64 input keeps its dtype and is exact too
    x64 = x.double()
    _assert_bitwise(fake_quant(x64, s, z, qmin, qmax, axis), _plain(x64, s, z, qmin, qmax, axis)[0])


@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_exact_ties_and_saturation_limits(qmin, qmax):
    g = torch.Generator().manual_seed(7)
    for scale in (0.25, 0.1, 0.0173, 3.0e-3, 1.7):  # a power of two and scales whose inverse is inexact
        z = 0.0 if qmin < 0 else float(torch.randint(qmin, qmax + 1, (), generator=g))
        ties = _ties(scale, z, qmin, qmax)
        assert len(ties) > 20
        x = torch.tensor(ties, dtype=torch.float32)
        s, zt = torch.tensor(scale), torch.tensor(z)
        assert torch.all((x / s) - torch.floor(x / s) == 0.5)  # they are exact ties
        ref, mask = _plain(x, s, zt, qmin, qmax, -1)
        _assert_bitwise(fake_quant(x, s, zt, qmin, qmax, -1), ref)
        xr = x.clone().requires_grad_(True)
        gr = torch.randn(x.shape, generator=g)
        fake_quant(xr, s, zt, qmin, qmax, -1).backward(gr)
        assert torch.equal(xr.grad, torch.where(mask, gr, 0.0))


def test_special_values():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e20, -1e20, 0.0, -0.0, -1e-45, 1e-45])
    for s, z, qmin, qmax in ((0.05, 3.0, 0, 255), (0.1, 0.0, 0, 255), (0.02, 0.0, -128, 127), (1.0, 0.0, -8, 7)):
        st, zt = torch.tensor(s), torch.tensor(z)
        _assert_bitwise(fake_quant(x, st, zt, qmin, qmax, -1), _plain(x, st, zt, qmin, qmax, -1)[0])
    # -0.0 from round(-0.3) comes out as +0.0, as (q - z) * s gives it
    for qmin, qmax in ((-128, 127), (0, 255)):
        y = fake_quant(torch.tensor([-0.01, -0.0, 0.0]), torch.tensor(0.1), torch.tensor(0.0), qmin, qmax, -1)
        assert not torch.signbit(y).any()


def _neighbours(values, n=40):
    """Every float32 within n steps of each value (the value included)."""
    out = []
    for c in np.asarray(values, dtype=np.float32):
        up = down = c
        out.append(c)
        for _ in range(n):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            out += [up, down]
    return torch.tensor(np.array(out, dtype=np.float32))


@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_x_bounds_match_division_on_every_nearby_float(qmin, qmax):
    rng = np.random.default_rng(qmax)
    for _ in range(50):
        s = np.float32(10 ** rng.uniform(-5, 1))
        z = 0.0 if qmin < 0 else float(rng.integers(qmin, qmax + 1))
        a, b = _x_bounds(torch.tensor(s), torch.tensor(z), qmin, qmax, np.float32)
        x = _neighbours([a, b, (qmin - z - 0.5) * s, (qmax - z + 0.5) * s])
        _, inside = _plain(x, torch.tensor(s), torch.tensor(z), qmin, qmax, -1)
        assert torch.equal((x > a) & (x < b), inside)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("lsq", [False, True])
def test_backward_mask_is_the_forward_codes(per_channel, lsq):
    """x.grad is grad exactly where qmin <= round(x/s) + z <= qmax, on floats next to every mask edge."""
    g = torch.Generator().manual_seed(3)
    qmin, qmax = 0, 255
    s, z = _qparams(g, qmin, qmax, 4 if per_channel else None)
    if per_channel:
        x = torch.randn(4, 3000, generator=g) * 3
        axis = 0
    else:
        edges = [(qmin - float(z) - 0.5) * float(s), (qmax - float(z) + 0.5) * float(s)]
        x = torch.cat([_neighbours(edges), torch.randn(5000, generator=g) * 4])
        axis = -1
    xr, sr = x.clone().requires_grad_(True), s.clone().requires_grad_(lsq)
    gr = torch.randn(x.shape, generator=g)
    fake_quant(xr, sr, z, qmin, qmax, axis).backward(gr)
    _, inside = _plain(x, s, z, qmin, qmax, axis)
    assert 0 < inside.float().mean() < 1
    assert torch.equal(xr.grad, torch.where(inside, gr, 0.0))


def test_traced_backward_equals_eager():
    """Under torch.compile the backward divides again (values unreadable while tracing): same gradients."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 9, 9, generator=g) * 2
    s, z = torch.tensor(0.013), torch.tensor(117.0)

    def f(x):
        return (fake_quant(x * 1.5, s, z, 0, 255, -1) ** 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    f(xe).backward()
    compiled(xc).backward()
    assert torch.equal(xc.grad, xe.grad)
