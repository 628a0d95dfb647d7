"""Each observer tested for its defining property; the registry drives the common contract tests."""
import math

import pytest
import torch

from qfair.quant.math import compute_qparams, fake_quantize_ref
from qfair.quant.observers import OBSERVERS, make_observer
from qfair.utils.errors import QfairError, QuantError


def _mse(x, lo, hi, qmin, qmax, sym):
    s, z = compute_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)), qmin, qmax, sym)
    return float(((fake_quantize_ref(x.double(), s.double(), z.double(), qmin, qmax) - x.double()) ** 2).mean())


@pytest.mark.parametrize("name", OBSERVERS.names())
def test_contract(name):
    obs = make_observer(name, 0, 255, False)
    with pytest.raises(QuantError, match="no data"):
        obs.compute_range()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        obs.observe(torch.randn(4, 8, 5, 5, generator=g))
    lo, hi = obs.compute_range()
    assert lo.dim() == 0 and hi.dim() == 0 and float(lo) < float(hi)
    assert -6 < float(lo) and float(hi) < 6
    obs.reset()
    with pytest.raises(QuantError):
        obs.compute_range()


def test_unknown_observer_lists_names():
    with pytest.raises(QfairError) as exc:
        make_observer("minmx", 0, 255, False)
    for name in OBSERVERS.names():
        assert name in str(exc.value)


def test_minmax_is_global_and_per_channel():
    obs = make_observer("minmax", 0, 255, False)
    obs.observe(torch.tensor([-1.0, 2.0]))
    obs.observe(torch.tensor([-3.0, 1.0]))
    assert [float(t) for t in obs.compute_range()] == [-3.0, 2.0]
    obs = make_observer("minmax", 0, 255, False, axis=0)
    obs.observe(torch.tensor([[1.0, -2.0], [5.0, 6.0]]))
    lo, hi = obs.compute_range()
    assert lo.tolist() == [-2.0, 5.0] and hi.tolist() == [1.0, 6.0]


def test_moving_average_is_ema():
    obs = make_observer("moving_average_minmax", 0, 255, False, averaging_constant=0.5)
    for lo, hi in [(-1, 1), (-3, 5), (-1, 3)]:
        obs.observe(torch.tensor([float(lo), float(hi)]))
    lo, hi = obs.compute_range()
    # m1 = -1; m2 = -1 + .5(-3+1) = -2; m3 = -2 + .5(-1+2) = -1.5 ; M: 1 -> 3 -> 3
    assert float(lo) == pytest.approx(-1.5) and float(hi) == pytest.approx(3.0)


def test_percentile_ignores_planted_outlier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    x[123] = 1000.0
    obs = make_observer("percentile", 0, 255, False, percentile=99.99)
    obs.observe(x[:100_000])
    obs.observe(x[100_000:])
    lo, hi = obs.compute_range()
    assert 3.0 < float(hi) < 5.0 and -5.0 < float(lo) < -3.0
    mm = make_observer("minmax", 0, 255, False)
    mm.observe(x)
    assert float(mm.compute_range()[1]) == 1000.0


def test_histogram_doubling_is_exact_rebinning():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5000, generator=g) * 0.1, torch.randn(5000, generator=g) * 7
    obs = make_observer("percentile", 0, 255, False)
    obs.observe(a)
    obs.observe(b)
    ref = torch.histc(torch.cat([a, b]), obs.bins, -obs.R, obs.R).double()
    assert obs.R == 32.0
    assert torch.equal(obs.hist, ref)


@pytest.mark.parametrize("sym", [False, True])
def test_mse_matches_brute_force(sym):
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(3000, generator=g), torch.tensor([12.0, -4.0])])  # heavy tail
    qmin, qmax = (-8, 7) if sym else (0, 15)  # 4 bits: clipping matters
    obs = make_observer("mse", qmin, qmax, sym)
    obs.observe(x)
    lo, hi = obs.compute_range()
    got = _mse(x, lo, hi, qmin, qmax, sym)
    # brute force on the raw values over a fine grid of ranges
    mn, mx = float(x.min()), float(x.max())
    best = math.inf
    grid = [i / 100 for i in range(1, 101)]
    if sym:
        amax = max(-mn, mx)
        best = min(_mse(x, -amax * r, amax * r, qmin, qmax, True) for r in grid)
    else:
        for r1 in grid[::2]:
            for r2 in grid[::2]:
                best = min(best, _mse(x, mn * r1, mx * r2, qmin, qmax, False))
    assert got <= best * 1.03
    assert got < _mse(x, mn, mx, qmin, qmax, sym) * 0.8  # clearly better than min/max


def test_mse_per_channel_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 200, generator=g)
    w[1, 0] = 9.0
    obs = make_observer("mse", -8, 7, True, axis=0)
    obs.observe(w)
    lo, hi = obs.compute_range()
    for c in range(3):
        got = _mse(w[c], lo[c], hi[c], -8, 7, True)
        amax = float(w[c].abs().max())
        best = min(_mse(w[c], -amax * k / 256, amax * k / 256, -8, 7, True) for k in range(1, 257))
        assert got == pytest.approx(best, rel=1e-6)


def test_entropy_clips_long_tail_keeps_bulk():
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(100_000, generator=g), torch.randn(50, generator=g) * 30])
    obs = make_observer("entropy", -128, 127, True)
    obs.observe(x)
    lo, hi = obs.compute_range()
    assert float(hi) < float(x.abs().max()) / 2  # tail clipped
    assert ((x > lo) & (x < hi)).float().mean() > 0.995  # bulk kept
    # uniform data (no tail): nearly the full range is kept
    obs = make_observer("entropy", -128, 127, True)
    obs.observe(torch.rand(100_000, generator=g) * 2 - 1)
    assert float(obs.compute_range()[1]) > 0.9


def test_entropy_refuses_per_channel():
    obs = make_observer("entropy", -128, 127, True, axis=0)
    with pytest.raises(QuantError, match="per-tensor"):
        obs.observe(torch.randn(4, 4))


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("name", OBSERVERS.names())
def test_given_batch_minmax_changes_nothing(name, axis):
    """observe(x, minmax) (the quantizer passes the min / max it computed anyway) == observe(x)."""
    from qfair.quant.math import reduce_minmax

    if name == "entropy" and axis is not None:
        pytest.skip("entropy is per-tensor only")
    g = torch.Generator().manual_seed(1)
    plain, given = make_observer(name, 0, 255, False, axis), make_observer(name, 0, 255, False, axis)
    for k in range(3):
        x = torch.randn(6, 4, 5, 5, generator=g) * (1 + k)
        plain.observe(x)
        given.observe(x, reduce_minmax(x.float(), axis))
    for a, b in zip(plain.compute_range(), given.compute_range()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantizer_batch_minmax_is_reduce_minmax(axis):
    from qfair.quant.math import reduce_minmax
    from qfair.quant.quantizer import _batch_minmax

    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, 3, 3, generator=g)
    x[1, 2, 0, 0] = float("nan")
    for a, b in zip(_batch_minmax(x, axis), reduce_minmax(x, axis)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_tracking_quantizer_feeds_observer_and_proxies():
    """A tracking quantizer hands the batch range to a registered observer, and plain observe(x) to a proxy
    object (e.g. the DDP range synchroniser); both end with the same range."""
    from qfair.quant.quantizer import ActQuantizer

    class Proxy:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def observe(self, x):
            self.calls += 1
            self.inner.observe(x)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 3, 8, 8, generator=g) * (k + 1) for k in range(3)]
    direct, proxied = ActQuantizer(8), ActQuantizer(8)
    proxied.observer = Proxy(proxied.observer)
    for q in (direct, proxied):
        q.track()
        for x in xs:
            q(x)
    assert proxied.observer.calls == 3
    assert torch.equal(direct.scale, proxied.scale) and torch.equal(direct.zero_point, proxied.zero_point)
    lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
    assert float(direct.observer.min_val) == lo and float(direct.observer.max_val) == hi
