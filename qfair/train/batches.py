"""Training batches whose order is a pure function of (seed, epoch), so a run can resume mid-epoch.

A *source* has ``batches_per_epoch()`` (or None when unknown) and ``epoch(e, start, rank, world)``
yielding :class:`Batch` objects: global batch ``i`` of epoch ``e`` is the same on every run, and
rank ``r`` of ``world`` gets rows ``[r*B/W, (r+1)*B/W)`` of it, so DDP with W ranks sees exactly the
samples a single process with the same total batch sees (the distributed test relies on it).

- :class:`IndexedSource`: images in a tensor (N, 3, 112, 112) (uint8 or normalised float) or any
  ``len()``/``[i]`` image store, optional identity labels and group labels; shuffled with
  ``torch.randperm`` seeded by (seed, epoch); optional horizontal flip, also seeded.
- :class:`MixedSource`: each batch takes ``n1 = round(ratio * B)`` samples from a first source (real)
  and the rest from a second (synthetic); samples without labels get label -1 (KD only). The rows of
  the two sources are interleaved evenly (:func:`mix_pattern`, independent of the number of
  processes), so every contiguous rank slice of B/W rows holds ``n1/W`` rows of the first source and
  ``(B-n1)/W`` of the second; when W does not divide ``n1`` each rank gets ``floor(n1/W)`` or
  ``ceil(n1/W)`` of them (see :func:`mix_pattern`).
- :class:`IterableSource`: any re-iterable of tensors / (images, labels[, groups]) tuples; the user's
  iterable decides the order, resume skips the batches already seen.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from ..utils.errors import DataError


@dataclass
class Batch:
    """One (per-rank) batch. images (B, 3, H, W) float normalised; the rest (B,) or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None  # int64, -1 = unlabelled
    groups: torch.Tensor | None = None  # int64 (-1 = unknown) or (B, G) float soft labels
    index: torch.Tensor | None = None  # int64 dataset indices (teacher-embedding cache)
    flipped: torch.Tensor | None = None  # bool, image was mirrored

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(mv(self.images), mv(self.labels), mv(self.groups), self.index, self.flipped)

    def shard(self, rank: int, world: int) -> Batch:
        if world == 1:
            return self
        n = len(self.index) if self.index is not None else len(self)
        if n % world:
            raise DataError(f"a batch of {n} images cannot be split evenly over {world} processes; "
                            f"use a batch_size divisible by the number of processes")
        lo, hi = rank * n // world, (rank + 1) * n // world
        cut = lambda t: None if t is None else t[lo:hi]
        return Batch(cut(self.images), cut(self.labels), cut(self.groups), cut(self.index), cut(self.flipped))


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1] with (x / 255 - 0.5) / 0.5 (README references [3]); floats pass."""
    if images.dtype == torch.uint8:
        return (images.float() / 255.0 - 0.5) / 0.5
    return images.float()


def as_batch(item: Any) -> Batch:
    """Accept a Batch, a tensor, a (images, labels[, groups]) tuple or a dict with those keys."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, torch.Tensor):
        return Batch(to_model_input(item))
    if isinstance(item, dict):
        return Batch(to_model_input(item["images"]), item.get("labels"), item.get("groups"), item.get("index"))
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        imgs = to_model_input(item[0])
        labels = item[1] if len(item) > 1 else None
        groups = item[2] if len(item) > 2 else None
        return Batch(imgs, None if labels is None else torch.as_tensor(labels).long(),
                     None if groups is None else torch.as_tensor(groups))
    raise DataError(f"a training batch must be a tensor (B, 3, 112, 112), a tuple (images, labels[, groups]) "
                    f"or a dict; got {type(item).__name__}")


class Source(Protocol):
    def batches_per_epoch(self) -> int | None: ...

    def epoch(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]: ...


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch, stream) only: the data order never depends on history."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + stream) % (2**63 - 1))


class IndexedSource:
    """Shuffled mini-batches of an indexable image collection (see module docstring)."""

    def __init__(self, images: Any, labels: Any = None, groups: Any = None, *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, hflip: bool = False, drop_last: bool = True,
                 group_names: Sequence[str] | None = None, name: str = "data") -> None:
        n = len(images)
        if n == 0:
            raise DataError(f"{name}: no training images")
        self.images, self.n, self.batch_size, self.seed = images, n, int(batch_size), int(seed)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.groups = None if groups is None else torch.as_tensor(groups)
        for what, t in (("labels", self.labels), ("groups", self.groups)):
            if t is not None and len(t) != n:
                raise DataError(f"{name}: {len(t)} {what} for {n} images")
        self.shuffle, self.hflip, self.drop_last, self.name = shuffle, hflip, drop_last, name
        self.group_names = list(group_names) if group_names is not None else None
        if drop_last and n < batch_size:
            raise DataError(f"{name}: {n} images are fewer than one batch of {batch_size}; lower batch_size "
                            "(--batch-size) or use more images (--data-n)")

    def __len__(self) -> int:
        return self.n

    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) permutation and (N,) flip flags of an epoch: a function of (seed, epoch) only."""
        g = epoch_generator(self.seed, epoch)
        perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        flips = (torch.rand(self.n, generator=g) < 0.5) if self.hflip else torch.zeros(self.n, dtype=torch.bool)
        return perm, flips

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) indices -> (B, 3, H, W) float normalised images."""
        if isinstance(self.images, torch.Tensor):
            return to_model_input(self.images[idx])
        return to_model_input(torch.stack([torch.as_tensor(self.images[int(i)]) for i in idx]))

    def _rows(self, perm: torch.Tensor, flips: torch.Tensor, b: int) -> Batch:
        """Global batch ``b`` of the epoch ordered by (``perm``, ``flips``), without its images."""
        sel = perm[b * self.batch_size:(b + 1) * self.batch_size]
        return Batch(images=torch.empty(0), index=sel, flipped=flips[sel],
                     labels=None if self.labels is None else self.labels[sel],
                     groups=None if self.groups is None else self.groups[sel])

    def load_flipped(self, idx: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """(B,) indices and (B,) flip flags -> (B, 3, H, W) float normalised images, mirrored where flagged."""
        imgs = self.load(idx)
        if bool(flipped.any()):
            imgs[flipped] = imgs[flipped].flip(-1)
        return imgs

    def epoch(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        perm, flips = self.order(epoch)
        for b in range(start, self.batches_per_epoch()):
            full = self._rows(perm, flips, b)
            part = full.shard(rank, world) if world > 1 else full
            yield replace(part, images=self.load_flipped(part.index, part.flipped))


def mix_pattern(n1: int, total: int) -> torch.Tensor:
    """(total,) bool: True where row ``j`` of a mixed batch comes from the first source.

    Row ``j`` is a first-source row when ``ceil((j + 1) * n1 / total) > ceil(j * n1 / total)`` (an even,
    Bresenham-like spread that starts with a first-source row), so any ``L`` consecutive rows hold
    ``floor`` or ``ceil`` of ``L * n1 / total`` first-source rows, and the rows ``[lo, hi)`` exactly
    ``ceil(hi * n1 / total) - ceil(lo * n1 / total)``. Rank ``r`` of ``W`` (rows ``[r*B/W, (r+1)*B/W)``)
    therefore gets ``ceil((r+1)*n1/W) - ceil(r*n1/W)`` first-source rows: exactly ``n1/W`` when W divides
    ``n1``, else ``floor(n1/W)`` or ``ceil(n1/W)`` (e.g. n1 = 3 over 2 ranks: 2 and 1). The pattern does not
    depend on W, so the global batch is the same for any number of processes (and for a resumed run)."""
    j = torch.arange(total + 1, dtype=torch.long)
    edges = (j * n1 + total - 1) // total  # ceil(j * n1 / total)
    return edges[1:] > edges[:-1]


def _interleave(mask: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Rows of ``a`` where ``mask`` is True and rows of ``b`` elsewhere, each in its own order."""
    if a is None:
        return None
    out = a.new_empty((len(mask), *a.shape[1:]))
    out[mask], out[~mask] = a, b
    return out


class MixedSource:
    """Batches mixing two sources at a fixed ratio (``ratio`` = fraction taken from ``first``)."""

    def __init__(self, first: IndexedSource, second: IndexedSource, ratio: float, *, batch_size: int) -> None:
        if not 0.0 < ratio < 1.0:
            raise DataError(f"mix ratio must be strictly between 0 and 1, got {ratio}")
        n1 = round(ratio * batch_size)
        if n1 == 0 or n1 == batch_size:
            raise DataError(f"mix ratio {ratio} with batch_size {batch_size} leaves one source empty")
        first.batch_size, second.batch_size = n1, batch_size - n1
        self.first, self.second, self.batch_size, self.ratio = first, second, batch_size, ratio
        self.group_names = first.group_names or second.group_names

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def batches_per_epoch(self) -> int:
        return min(self.first.batches_per_epoch(), self.second.batches_per_epoch())

    def epoch(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Global batch ``b``: the first source's rows and the second's interleaved by :func:`mix_pattern` (each
        in its own order); rank ``rank`` of ``world`` gets its contiguous slice and loads only those images."""
        n1, n2, off = self.first.batch_size, self.second.batch_size, len(self.first)
        if world > 1 and (n1 + n2) % world == 0 and n1 % world:  # (an indivisible batch is refused by shard)
            import warnings

            warnings.warn(f"a mixed batch of {n1} + {n2} images does not split evenly over {world} processes: each "
                          f"gets {n1 // world} or {-(-n1 // world)} images of the first source, so the margin loss "
                          f"(a mean over each process's labelled images) weighs them unevenly; choose batch_size and "
                          f"mix_ratio so that {world} divides both counts", stacklevel=2)
        o1, f1 = self.first.order(epoch)
        o2, f2 = self.second.order(epoch)
        for b in range(start, self.batches_per_epoch()):
            a, c = self.first._rows(o1, f1, b), self.second._rows(o2, f2, b)
            mask = mix_pattern(len(a.index), len(a.index) + len(c.index))  # (a short last batch: drop_last=False)
            full = Batch(
                images=torch.empty(0),
                labels=_interleave(mask, *_fill_opt(a.labels, c.labels, len(a.index), len(c.index), -1)),
                groups=_interleave(mask, *_fill_opt(a.groups, c.groups, len(a.index), len(c.index), -1)),
                index=_interleave(mask, a.index, c.index + off),
                flipped=_interleave(mask, a.flipped, c.flipped),
            )
            part = full.shard(rank, world) if world > 1 else full
            mine = part.index < off
            if bool(mine.all()) or not bool(mine.any()):  # this rank's slice holds one source only
                src, idx = (self.first, part.index) if bool(mine.all()) else (self.second, part.index - off)
                yield replace(part, images=src.load_flipped(idx, part.flipped))
                continue
            x1 = self.first.load_flipped(part.index[mine], part.flipped[mine])
            x2 = self.second.load_flipped(part.index[~mine] - off, part.flipped[~mine])
            yield replace(part, images=_interleave(mine, x1, x2))


def _fill_opt(a: torch.Tensor | None, b: torch.Tensor | None, na: int, nb: int,
              fill: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both label / group tensors, a missing one filled with ``fill`` (both None when neither source has them)."""
    if a is None and b is None:
        return None, None
    if a is not None and a.dim() == 2 or b is not None and b.dim() == 2:
        raise DataError("soft group labels cannot be mixed with another source; give hard group labels")
    a = torch.full((na,), fill, dtype=torch.long) if a is None else a.long()
    b = torch.full((nb,), fill, dtype=torch.long) if b is None else b.long()
    return a, b


class IterableSource:
    """Wrap a user iterable (re-iterated every epoch); resume consumes and drops ``start`` batches."""

    def __init__(self, batches: Iterable[Any], group_names: Sequence[str] | None = None) -> None:
        self.batches = batches
        self.group_names = list(group_names) if group_names is not None else None

    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.batches)  # type: ignore[arg-type]
        except TypeError:
            return None

    def epoch(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        for i, item in enumerate(self.batches):
            if i >= start:
                yield as_batch(item).shard(rank, world)


def as_source(data: Any, group_names: Sequence[str] | None = None) -> Any:
    """A source as-is, or a user iterable wrapped in :class:`IterableSource`."""
    if hasattr(data, "epoch") and hasattr(data, "batches_per_epoch"):
        return data
    if isinstance(data, torch.Tensor):
        raise DataError("pass an iterable of batches (e.g. a list of (B, 3, 112, 112) tensors), not one tensor")
    return IterableSource(data, group_names)
