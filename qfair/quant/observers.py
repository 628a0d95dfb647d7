"""Range observers behind one small interface: ``observe(x)``, ``compute_range() -> (lo, hi)``, ``reset()``.

``observe(x, minmax=(lo, hi))`` passes the batch's min and max (along ``axis``) when the caller has them
already (the quantizer computes them to check for NaN / Inf), so no observer reads ``x`` again for them.

Registered by name in :data:`OBSERVERS` (``minmax``, ``moving_average_minmax``, ``percentile``, ``mse``,
``entropy``). ``lo``/``hi`` are 0-d tensors per-tensor or (C,) along ``axis`` per-channel. Observers
are plain objects, not modules: their statistics are calibration scratch, never part of a checkpoint
(the quantizer stores the resulting scale and zero point).

The histogram observers (percentile, mse, entropy) keep a signed histogram over [-R, R] whose
half-width R grows by doubling: merging adjacent bin pairs re-bins the old counts exactly, so the
histogram never depends on the order the batches came in beyond bin resolution (R/bins*2).
Per-channel (weights), ``percentile`` and ``mse`` work on the stored raw tensor instead.
"""
from __future__ import annotations

import abc
import math
from typing import Callable

import numpy as np
import torch

from ..utils.errors import QuantError
from ..utils.registry import Registry
from .math import compute_qparams, fake_quantize_ref, reduce_minmax

OBSERVERS: Registry[Callable[..., "Observer"]] = Registry("observer")


class Observer(abc.ABC):
    """Base: ``qmin``/``qmax``/``symmetric`` describe the target grid (some observers optimise for it)."""

    name = "observer"

    def __init__(self, qmin: int = 0, qmax: int = 255, symmetric: bool = False, axis: int | None = None) -> None:
        self.qmin, self.qmax, self.symmetric, self.axis = int(qmin), int(qmax), bool(symmetric), axis
        self.reset()

    @abc.abstractmethod
    def reset(self) -> None:
        """Implemented by every subclass."""

    @abc.abstractmethod
    def observe(self, x: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Implemented by every subclass. ``minmax``: ``reduce_minmax(x.float(), axis)`` if already computed."""

    @abc.abstractmethod
    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Implemented by every subclass."""

    def _empty(self) -> QuantError:
        return QuantError(f"observer '{self.name}' has seen no data: the calibration set was empty or never "
                          "reached this layer")


@OBSERVERS.register("minmax", aliases=("max",))
class MinMaxObserver(Observer):
    """Running global min and max (QuantFace's activation ranges; README references [5])."""

    name = "minmax"

    def reset(self) -> None:
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if x.numel() == 0:  # an empty batch carries no range
            return
        lo, hi = minmax if minmax is not None else reduce_minmax(x.float(), self.axis)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None:
            raise self._empty()
        return self.min_val.clone(), self.max_val.clone()


@OBSERVERS.register("moving_average_minmax", aliases=("ema", "moving_average"))
class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min and max: m <- (1 - c) m + c * batch_min."""

    name = "moving_average_minmax"

    def __init__(self, qmin: int = 0, qmax: int = 255, symmetric: bool = False, axis: int | None = None,
                 averaging_constant: float = 0.01) -> None:
        self.c = float(averaging_constant)
        super().__init__(qmin, qmax, symmetric, axis)

    def observe(self, x: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if x.numel() == 0:  # an empty batch carries no range (and would not move the average)
            return
        lo, hi = minmax if minmax is not None else reduce_minmax(x.float(), self.axis)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.c * (lo - self.min_val)
            self.max_val = self.max_val + self.c * (hi - self.max_val)


class _Histogram(Observer):
    """Signed histogram over [-R, R] with doubling R (see module docstring); raw tensors per-channel."""

    bins = 2048

    def reset(self) -> None:
        self.hist: torch.Tensor | None = None  # (bins,) float64 counts
        self.R = 0.0
        self.raw: list[torch.Tensor] = []  # per-channel only: (C, n) slices
        self.minmax = MinMaxObserver(axis=self.axis)

    def observe(self, x: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if x.numel() == 0:  # an empty batch carries no range
            return
        x = x.detach().float()
        lo, hi = minmax if minmax is not None else reduce_minmax(x, self.axis)
        self.minmax.observe(x, (lo, hi))
        if self.axis is not None:
            self.raw.append(x.transpose(0, self.axis).reshape(x.shape[self.axis], -1).cpu())
            return
        x = x.flatten()
        m = max(-float(lo), float(hi))  # max |x|, from the min and max already at hand
        if self.hist is None:
            self.R = 2.0 ** math.ceil(math.log2(m)) if m > 0 else 2.0**-20
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        while m > self.R:  # double the range: merge bin pairs, pad a quarter of the bins each side
            half = self.hist.view(self.bins // 2, 2).sum(1)
            pad = torch.zeros(self.bins // 4, dtype=torch.float64)
            self.hist = torch.cat([pad, half, pad])
            self.R *= 2.0
        self.hist += torch.histc(x.cpu(), self.bins, -self.R, self.R).double()

    def centers(self) -> torch.Tensor:
        w = 2 * self.R / self.bins
        return torch.arange(self.bins, dtype=torch.float64) * w - self.R + w / 2

    def _raw(self) -> torch.Tensor:
        return torch.cat(self.raw, dim=1)  # (C, n)

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.minmax.min_val is None:
            raise self._empty()
        lo, hi = self._range()
        mn, mx = self.minmax.compute_range()
        # the histogram / raw copies live on the CPU, the min and max on the data's device (a CUDA weight's (C,)
        # per-channel range against a CPU one would not broadcast): return them on the data's device
        lo = torch.as_tensor(lo, dtype=torch.float32).to(mn.device)
        hi = torch.as_tensor(hi, dtype=torch.float32).to(mx.device)
        return torch.maximum(lo, mn), torch.minimum(hi, mx)

    @abc.abstractmethod
    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range chosen from the histogram (each histogram observer's own rule)."""


@OBSERVERS.register("percentile", aliases=("histogram",))
class PercentileObserver(_Histogram):
    """Range = [(100 - p)-th, p-th] percentile of the values (p = 99.99 by default)."""

    name = "percentile"

    def __init__(self, qmin: int = 0, qmax: int = 255, symmetric: bool = False, axis: int | None = None,
                 percentile: float = 99.99) -> None:
        if not 50.0 < percentile <= 100.0:
            raise QuantError(f"percentile must be in (50, 100], got {percentile}")
        self.p = float(percentile)
        super().__init__(qmin, qmax, symmetric, axis)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.tensor([1 - self.p / 100, self.p / 100])
        if self.axis is not None:
            qs = torch.quantile(self._raw(), q, dim=1)  # (2, C)
            return qs[0], qs[1]
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        edges = torch.linspace(-self.R, self.R, self.bins + 1, dtype=torch.float64)
        i_lo = int(torch.searchsorted(cdf, q[0].double()))  # first bin whose cdf reaches the lower tail
        i_hi = int(torch.searchsorted(cdf, q[1].double()))
        return edges[i_lo].float(), edges[min(i_hi + 1, self.bins)].float()


def _grid_error(v: torch.Tensor, w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
                symmetric: bool) -> torch.Tensor:
    """Weighted squared fake-quant error of values ``v`` (n,) for K candidate ranges (K,) -> (K,)."""
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric)
    vq = fake_quantize_ref(v[None, :], scale[:, None].double(), zp[:, None].double(), qmin, qmax)
    return (((vq - v[None, :]) ** 2) * w[None, :]).sum(1)


@OBSERVERS.register("mse")
class MSEObserver(_Histogram):
    """Clipping range minimising the mean squared quantization error.

    Per-tensor: grid search on the histogram (bin centres weighted by counts) over lo = min * i/N and
    hi = max * j/N (asymmetric, N x N grid) or amax * k/N (symmetric). Per-channel: the same 1-d shrink
    search on the raw weights, vectorised over channels.
    """

    name = "mse"
    grid = 64

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is not None:
            return self._per_channel()
        mn, mx = (float(t) for t in self.minmax.compute_range())
        mn, mx = min(mn, 0.0), max(mx, 0.0)
        keep = self.hist > 0
        v, w = self.centers()[keep], self.hist[keep]
        r = torch.arange(1, self.grid + 1, dtype=torch.float64) / self.grid
        if self.symmetric:
            amax = max(-mn, mx) * torch.arange(1, 4 * self.grid + 1, dtype=torch.float64) / (4 * self.grid)
            err = _grid_error(v, w, -amax, amax, self.qmin, self.qmax, True)
            k = int(torch.argmin(err))
            return -amax[k].float(), amax[k].float()
        best, best_lo, best_hi = math.inf, mn, mx
        for lo in (mn * r).tolist():  # one row of the N x N grid at a time: (N,) candidate errors
            err = _grid_error(v, w, torch.full_like(r, lo), mx * r, self.qmin, self.qmax, False)
            j = int(torch.argmin(err))
            if float(err[j]) < best:
                best, best_lo, best_hi = float(err[j]), lo, mx * float(r[j])
        return torch.tensor(best_lo), torch.tensor(best_hi)

    def _per_channel(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._raw()  # (C, n)
        mn, mx = torch.clamp(x.min(1).values, max=0), torch.clamp(x.max(1).values, min=0)
        best_err = torch.full_like(mn, math.inf)
        best_lo, best_hi = mn.clone(), mx.clone()
        for k in range(1, 4 * self.grid + 1):
            ratio = k / (4 * self.grid)
            lo, hi = mn * ratio, mx * ratio
            scale, zp = compute_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
            err = ((fake_quantize_ref(x, scale[:, None], zp[:, None], self.qmin, self.qmax) - x) ** 2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


@OBSERVERS.register("entropy", aliases=("kl",))
class EntropyObserver(_Histogram):
    """KL-divergence calibration (TensorRT's entropy calibrator) on the histogram of |x|.

    For each candidate threshold t (a bin edge), the clipped reference distribution P (tail mass folded
    into the last bin) is compared with Q, P merged into as many bins as the grid has levels on one
    side and expanded back over P's non-empty bins; the t with the smallest KL(P || Q) wins.
    Per-tensor only.
    """

    name = "entropy"

    def observe(self, x: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if self.axis is not None:
            raise QuantError("observer 'entropy' computes per-tensor ranges only; use minmax, mse or percentile "
                             "for per-channel weights (weight_observer)")
        super().observe(x, minmax)

    # smallest candidate threshold, in bins of |x| over [0, R] (R <= 2 max|x|): TensorRT starts at 128 of
    # 2048 bins over [0, max|x|]; without a floor, a 2-bit grid (2 levels a side) would try 2-bin thresholds
    # and, on a few hundred values, pick one that clips almost everything
    min_bins = 64

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.bins // 2
        h = self.hist.numpy()
        absh = h[half:] + h[:half][::-1]  # (half,) counts of |x| over [0, R]
        nz = np.nonzero(absh)[0]
        if len(nz) == 0:
            return torch.tensor(0.0), torch.tensor(0.0)
        last = int(nz[-1]) + 1
        # one-sided data on an unsigned grid uses every level on its side (either side: the range always holds 0,
        # so negative-only data gets [lo, 0] and all the levels too); signed grids split them
        lo, hi = self.minmax.compute_range()
        one_sided = not self.symmetric and (float(lo) >= 0.0 or float(hi) <= 0.0)
        nq = max((self.qmax - self.qmin + 1) // (1 if one_sided else 2), 2)  # levels on one side of zero
        start = max(nq, self.min_bins)
        if last <= start:
            t = last * self.R / half
            return torch.tensor(-t), torch.tensor(t)
        # the first bin holds every exact zero (a ReLU / PReLU output's spike), which quantizes exactly at any
        # threshold; smeared over a merged bin it would dominate the divergence and pull the threshold down
        # (post-ReLU data clipped at ~40 % of its range). TensorRT's calibrator levels it the same way.
        absh = absh.astype(np.float64)
        absh[0] = absh[1]
        step = max(1, (last - start) // 256)  # at most ~256 candidates
        best_kl, best_i = math.inf, last
        for i in list(range(start, last, step)) + [last]:
            p = absh[:i].astype(np.float64).copy()
            p[i - 1] += absh[i:].sum()
            chunks = np.array_split(absh[:i], nq)
            q = np.concatenate([np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in chunks])
            ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
            m = ps > 0
            if np.any(qs[m] == 0):  # tail bin empty in Q: infinite divergence
                continue
            kl = float(np.sum(ps[m] * np.log(ps[m] / qs[m])))
            if kl < best_kl:
                best_kl, best_i = kl, i
        t = best_i * self.R / half
        return torch.tensor(-t), torch.tensor(t)


def make_observer(name: str, qmin: int, qmax: int, symmetric: bool, axis: int | None = None,
                  **options: float) -> Observer:
    """Build a registered observer; options not accepted by that observer are ignored."""
    import inspect

    cls = OBSERVERS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in options.items() if k in accepted}
    return cls(qmin=qmin, qmax=qmax, symmetric=symmetric, axis=axis, **kw)
