"""Vectorised bootstrap over identities (README references [2]: pairs share identities, so resample
identities, not pairs).

Resampling is stratified by group: each group's identities are drawn with replacement (counts ``c``).
A genuine pair of identity ``a`` then counts ``c_a`` times and an impostor pair ``(a, b)`` counts
``c_a * c_b`` times (the "pigeonhole" bootstrap for crossed designs; both weights have expectation
about 1). Without identity labels, pairs are resampled instead and a note says that this understates
the uncertainty. Every statistic of the evaluator is a ratio of weighted sums, so one matrix product
``W (B, P_g) @ X (P_g, K)`` per group and chunk gives all of them for all resamples at once.
"""
from __future__ import annotations

import numpy as np

from ..utils.errors import DataError

PAIR_NOTE = ("identities of the pairs are unknown: the bootstrap resamples pairs, which understates the "
             "uncertainty because pairs that share an identity are correlated")
IDENTITY_NOTE = "bootstrap resamples identities within each group (pairs weighted by their identities' counts)"
_CHUNK_ELEMENTS = 3_000_000  # weights held at once (B_chunk * P_g), bounds memory to ~24 MB


def check_pair_ids(pair_ids: np.ndarray | None, n_pairs: int, benchmark: str = "benchmark") -> np.ndarray | None:
    """``pair_ids`` as an array of shape ``(n_pairs, 2)`` (the identities of both images of each pair), or
    None; any other shape raises DataError naming ``benchmark``."""
    if pair_ids is None:
        return None
    ids = np.asarray(pair_ids)
    if ids.ndim != 2 or ids.shape != (n_pairs, 2):
        raise DataError(f"{benchmark}: pair_ids must have shape (P, 2) = ({n_pairs}, 2), the identities of the two "
                        f"images of each of the {n_pairs} pairs in pair order, got shape {ids.shape}; pass one row "
                        f"per pair, or pair_ids=None to bootstrap pairs instead of identities")
    return ids


class Resampler:
    """Bootstrap weights for pairs in groups. Same inputs and seed -> same weights (paired comparisons)."""

    def __init__(self, group_codes: np.ndarray, n_groups: int, pair_ids: np.ndarray | None = None,
                 n_bootstrap: int = 1000, seed: int = 0) -> None:
        self.codes = np.asarray(group_codes)
        self.n_groups = n_groups
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.method = "identity" if pair_ids is not None else "pair"
        self.note = IDENTITY_NOTE if pair_ids is not None else PAIR_NOTE
        pair_ids = check_pair_ids(pair_ids, len(self.codes), "bootstrap")
        self._groups: list[tuple[np.ndarray, int, np.ndarray | None, np.ndarray | None]] = []
        for g in range(n_groups):
            idx = np.flatnonzero(self.codes == g)
            if pair_ids is None:
                self._groups.append((idx, len(idx), None, None))
                continue
            ids = pair_ids[idx]
            uniq, inv = np.unique(ids.reshape(-1), return_inverse=True)
            inv = inv.reshape(-1, 2)
            a, b = inv[:, 0], inv[:, 1]
            b = np.where(a == b, len(uniq), b)  # genuine pair: second factor is the constant column
            self._groups.append((idx, len(uniq), a, b))

    def group_sums(self, X: np.ndarray) -> np.ndarray:
        """Weighted sums ``(B, G, K)`` of the columns of ``X`` (P, K) over each group's pairs.

        Computed in float32: exact for the indicator columns the evaluator uses (integer partial sums
        stay far below 2**24); the gathers use ``np.take``, several times faster than fancy indexing.
        """
        X = np.asarray(X, dtype=np.float32)
        B = self.n_bootstrap
        out = np.zeros((B, self.n_groups, X.shape[1]))
        for g, (idx, n_units, a, b) in enumerate(self._groups):
            if len(idx) == 0 or n_units == 0:
                continue
            rng = np.random.default_rng([self.seed, g])
            Xg = np.ascontiguousarray(X[idx])
            chunk = max(1, min(B, _CHUNK_ELEMENTS // max(len(idx), n_units)))
            for b0 in range(0, B, chunk):
                bc = min(chunk, B - b0)
                draws = rng.integers(0, n_units, size=(bc, n_units))
                draws += (np.arange(bc) * (n_units + 1))[:, None]
                counts = np.bincount(draws.ravel(), minlength=bc * (n_units + 1)).reshape(bc, n_units + 1)
                counts = counts.astype(np.float32)
                if a is None:
                    w = counts[:, :n_units]  # pair bootstrap: counts of each pair
                else:
                    counts[:, n_units] = 1.0
                    w = np.take(counts, a, axis=1)
                    w *= np.take(counts, b, axis=1)
                out[b0:b0 + bc, g] = w @ Xg
        return out


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (a resample without any pair of that kind)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
