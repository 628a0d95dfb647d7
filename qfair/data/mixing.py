"""Mixing sources and group-balanced identity sampling (study B, README references [6]).

- :func:`balanced_identity_sample`: keep the same number of identities per group; with soft labels
  (a group classifier's probabilities per identity) keep the most representative identities of each
  group, as study B's ethnicity-aware sampling does; with hard labels pick them at random (seeded).
- :class:`MixedSource`: a dataset drawing a fixed share of its items from each source (e.g. 70 % real,
  30 % synthetic), identity labels kept distinct across sources; seeded and reproducible.
- :func:`mix_calibration`: calibration batches mixed from several source specs at given ratios.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils.errors import DataError


def balanced_identity_sample(groups: Any, per_group: int | None = None, seed: int = 0,
                             group_names: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the identities to keep, ``per_group`` per group (default: the smallest group's size).

    ``groups``: per identity, either hard labels (N,) (ints or strings) or soft labels (N, G)
    probabilities. Soft: each identity goes to its most likely group and the ``per_group`` identities
    with the highest probability of their group are kept. Returns sorted int64 indices.
    """
    arr = np.asarray(groups)
    rng = np.random.default_rng(seed)
    if arr.ndim == 2:
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise DataError("soft group labels must be finite, non-negative probabilities")
        assign, score = arr.argmax(1), arr.max(1)
        names = list(range(arr.shape[1]))
    elif arr.ndim == 1:
        names = list(group_names) if group_names is not None else sorted(set(arr.tolist()), key=str)
        lookup = {g: i for i, g in enumerate(names)}
        try:
            assign = np.array([lookup[g] for g in arr.tolist()], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"identity group {exc.args[0]!r} is not one of {names}") from None
        score = rng.random(len(arr))  # random order among equally representative identities
    else:
        raise DataError(f"groups must be (N,) hard labels or (N, G) soft labels, got shape {arr.shape}")
    counts = np.bincount(assign, minlength=len(names))
    present = counts[counts > 0]
    if len(present) == 0:
        raise DataError("no identities to sample")
    k = int(present.min()) if per_group is None else int(per_group)
    short = [str(names[g]) for g in range(len(names)) if 0 < counts[g] < k]
    if short:
        raise DataError(f"groups {', '.join(short)} have fewer than {k} identities; lower per_group")
    keep = []
    for g in range(len(names)):
        members = np.flatnonzero(assign == g)
        if len(members):
            keep.append(members[np.argsort(-score[members], kind="stable")[:k]])
    return np.sort(np.concatenate(keep))


def identity_soft_labels(probs: np.ndarray, identity_of: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image soft labels (N, G) -> (identities (K,), mean soft label per identity (K, G)), the
    identity scores :func:`balanced_identity_sample` takes."""
    probs = np.asarray(probs, dtype=np.float64)
    ids = np.asarray(identity_of)
    if probs.ndim != 2 or len(probs) != len(ids):
        raise DataError(f"need (N, G) probabilities and N identity labels, got {probs.shape} and {len(ids)}")
    uniq, inv = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(uniq), probs.shape[1]))
    np.add.at(sums, inv, probs)
    return uniq, sums / np.bincount(inv, minlength=len(uniq))[:, None]


class MixedSource:
    """Dataset of ``(image, label)`` with ``round(ratio_k * size)`` items from each source ``k``.

    ``indices[k]`` (optional) restricts source ``k`` to those item indices (e.g. images of the identities
    kept by :func:`balanced_identity_sample`). Items are drawn without replacement when a source is large
    enough, with replacement otherwise. Labels of labelled sources are offset so identities stay
    distinct across sources; unlabelled items (label < 0) keep -1. ``source_of[i]`` tells the source.
    """

    def __init__(self, sources: Sequence[Any], ratios: Sequence[float], size: int, seed: int = 0,
                 indices: Sequence[Sequence[int] | None] | None = None,
                 num_labels: Sequence[int] | None = None) -> None:
        if len(sources) != len(ratios) or not sources:
            raise DataError(f"{len(sources)} sources but {len(ratios)} ratios")
        r = np.asarray(ratios, dtype=np.float64)
        if not np.isfinite(r).all() or (r < 0).any() or r.sum() <= 0 or size < 1:
            raise DataError(f"ratios must be non-negative with a positive sum and size >= 1, got {tuple(ratios)}")
        r = r / r.sum()
        counts = np.floor(r * size).astype(int)
        counts[np.argsort(-(r * size - counts), kind="stable")[: size - counts.sum()]] += 1
        rng = np.random.default_rng(seed)
        self.sources = list(sources)
        items: list[tuple[int, int]] = []
        for k, (src, c) in enumerate(zip(self.sources, counts)):
            pool = np.arange(len(src)) if indices is None or indices[k] is None else np.asarray(indices[k])
            if c and len(pool) == 0:
                raise DataError(f"source {k} is empty but its ratio asks for {c} items")
            pick = rng.choice(pool, size=c, replace=c > len(pool)) if c else np.zeros(0, np.int64)
            items += [(k, int(i)) for i in pick]
        order = rng.permutation(len(items))
        self.items = [items[i] for i in order]
        self.source_of = np.array([k for k, _ in self.items], dtype=np.int64)
        if num_labels is None:
            num_labels = [_num_labels(s) for s in self.sources]
        self.num_labels = [int(n) for n in num_labels]
        self.offsets = np.concatenate([[0], np.cumsum(num_labels)[:-1]]).astype(np.int64)
        self.counts = counts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        k, j = self.items[i]
        img, label = self.sources[k][j]
        if label is None or int(label) < 0:
            return img, -1
        if int(label) >= self.num_labels[k] and k < len(self.sources) - 1:  # it would share the next source's ids
            raise DataError(f"source {k} ({type(self.sources[k]).__name__}) gave label {int(label)}, but "
                            f"{self.num_labels[k]} labels were counted for it, so its identities would merge with "
                            f"source {k + 1}'s; pass num_labels= (the identity count of every source)")
        return img, int(label) + int(self.offsets[k])


def _num_labels(src: Any) -> int:
    """How many identity labels ``src`` uses (max label + 1; 0 when it has none or cannot say)."""
    targets = getattr(src, "targets", None)
    if targets is not None and len(targets):
        return int(np.max(targets)) + 1
    classes = getattr(src, "classes", None)
    if classes is not None:
        return len(classes)
    labels = getattr(src, "labels", None)  # e.g. RecordIO: reads the record headers, decodes no image
    if callable(labels):
        values = np.asarray(labels())
        return int(values.max()) + 1 if values.size and values.max() >= 0 else 0
    return 0


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """``"real:/a@0.7|synthetic@0.3"`` -> [("real:/a", 0.7), ("synthetic", 0.3)]."""
    out = []
    for part in spec.split("|"):
        src, sep, w = part.rpartition("@")
        if not sep or not src:
            raise DataError(f"mix spec part {part!r} must be SOURCE@RATIO, e.g. real:/data/faces@0.7|synthetic@0.3")
        try:
            ratio = float(w)
        except ValueError:
            raise DataError(f"mix spec part {part!r}: ratio {w!r} is not a number") from None
        if not np.isfinite(ratio) or ratio < 0:
            raise DataError(f"mix spec part {part!r}: ratio {w!r} must be a finite number >= 0, e.g. @0.3")
        out.append((src, ratio))
    return out


def mix_calibration(parts: Sequence[tuple[str, float]] | str, n: int, batch_size: int, model: Any = None,
                    seed: int = 0, **kw: Any) -> list:
    """Calibration batches with ``round(ratio * n)`` images from each source spec, shuffled (seeded)."""
    import torch

    from .calibration import calibration_batches

    parts = parse_mix(parts) if isinstance(parts, str) else list(parts)
    ratios = np.asarray([w for _, w in parts], dtype=np.float64)
    if not np.isfinite(ratios).all() or (ratios < 0).any() or ratios.sum() <= 0:
        raise DataError(f"mix ratios must be finite, non-negative and have a positive sum, got {ratios.tolist()}")
    ratios = ratios / ratios.sum()
    counts = np.floor(ratios * n).astype(int)
    counts[np.argsort(-(ratios * n - counts), kind="stable")[: n - counts.sum()]] += 1
    chunks = [torch.cat(calibration_batches(src, int(c), batch_size, model=model, seed=seed + k, **kw))
              for k, ((src, _), c) in enumerate(zip(parts, counts)) if c > 0]
    x = torch.cat(chunks)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    return [x[s:s + batch_size] for s in range(0, len(x), batch_size)]
