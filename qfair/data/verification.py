"""Verification sets: distinct images stored once, pairs as index pairs into them (so an evaluator
embeds every image exactly once), a group per pair and contiguous folds per group (README references [3]).

Benchmarks are opened from specs like ``rfw:/data/RFW``, ``lfw:/x/lfw.bin``, ``builtin`` or
``builtin:small`` through the :data:`BENCHMARKS` registry (kind name -> reader(path)).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import DataError
from ..utils.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch


class ImageStore:
    """Distinct images held in memory as one uint8 tensor ``(N, 3, 112, 112)``.

    ``store[i]`` -> uint8 ``(3, 112, 112)``; ``batches(bs)`` yields ``(idx (B,), float (B, 3, 112, 112))``
    normalised with :func:`~qfair.data.preprocess.to_model_input`.
    """

    def __init__(self, images: Any, names: Sequence[str] | None = None) -> None:
        import torch

        if isinstance(images, np.ndarray):
            from .preprocess import hwc_to_nchw

            images = hwc_to_nchw(images) if images.ndim == 4 and images.shape[-1] == 3 else torch.from_numpy(images)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[1] != 3:
            shape = tuple(getattr(images, "shape", ()))
            raise DataError(f"ImageStore needs uint8 images (N, 3, H, W), got {type(images).__name__} {shape}")
        self._images = images.contiguous()
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self._images[idx]

    def get_many(self, idx: Sequence[int]) -> torch.Tensor:
        """uint8 ``(B, 3, 112, 112)`` for the given indices."""
        import torch

        return self._images[torch.as_tensor(np.asarray(idx, dtype=np.int64))]

    def batches(self, batch_size: int = 64, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(idx (B,) int64, float (B, 3, 112, 112))`` over all images in order."""
        import torch

        from .preprocess import to_model_input

        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self)))
            yield idx, to_model_input(self._images[start:start + len(idx)])

    def subset(self, keep: Sequence[int]) -> ImageStore:
        """A store of the images ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        names = [self.names[i] for i in keep] if self.names is not None else None
        return ImageStore(self.get_many(keep), names)

    def uint8(self) -> torch.Tensor:
        """All images, uint8 ``(N, 3, 112, 112)`` (materialised for lazy stores)."""
        return self._images


class _LazyDataset:
    """torch-Dataset-like view of a lazy store (picklable for DataLoader workers)."""

    def __init__(self, sources: list, names: list[str], loader: Callable[[Any, str], np.ndarray]) -> None:
        self.sources, self.names, self.loader = sources, names, loader

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.loader(self.sources[i], self.names[i])


def _stack(items: list[np.ndarray]) -> torch.Tensor:
    from .preprocess import hwc_to_nchw

    return hwc_to_nchw(np.stack(items))


class LazyImageStore(ImageStore):
    """Images decoded on demand from ``sources`` (encoded bytes, paths, or reader-specific items) by
    ``loader(source, name) -> uint8 (112, 112, 3)``. Memory stays bounded by the batch size."""

    def __init__(self, sources: Sequence[Any], names: Sequence[str],
                 loader: Callable[[Any, str], np.ndarray] | None = None) -> None:
        if len(sources) != len(names):
            raise ValueError("sources and names differ in length")
        self._ds = _LazyDataset(list(sources), [str(n) for n in names], loader or _decode_loader)
        self.names = self._ds.names

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, idx: int) -> torch.Tensor:
        return _stack([self._ds[int(idx)]])[0]

    def get_many(self, idx: Sequence[int]) -> torch.Tensor:
        return _stack([self._ds[int(i)] for i in idx])

    def batches(self, batch_size: int = 64, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        from .preprocess import to_model_input

        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers <= 0:
            for start in range(0, len(self), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(self)))
                yield idx, to_model_input(self.get_many(idx.tolist()))
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(self._ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_stack)
        start = 0
        for imgs in loader:
            idx = torch.arange(start, start + imgs.shape[0])
            start += imgs.shape[0]
            yield idx, to_model_input(imgs)

    def subset(self, keep: Sequence[int]) -> LazyImageStore:
        keep = [int(i) for i in keep]
        return LazyImageStore([self._ds.sources[i] for i in keep], [self._ds.names[i] for i in keep], self._ds.loader)

    def uint8(self) -> torch.Tensor:
        return self.get_many(range(len(self)))

    def validate(self, skip_corrupt: bool = False, cache_bytes: int = 1 << 30) -> tuple[ImageStore, list[int]]:
        """Decode every image once. Returns ``(store, bad_indices)``.

        A corrupt image raises :class:`DataError` naming it, unless ``skip_corrupt`` (then its index is
        returned in ``bad_indices``). If all images fit in ``cache_bytes`` the returned store holds them
        decoded in memory (no second decode); otherwise it is this lazy store.
        """
        from .preprocess import IMAGE_SIZE

        keep_pixels = len(self) * 3 * IMAGE_SIZE * IMAGE_SIZE <= cache_bytes
        decoded: list[np.ndarray] = []
        bad: list[int] = []
        for i in range(len(self)):
            try:
                img = self._ds[i]
            except DataError:
                if not skip_corrupt:
                    raise
                bad.append(i)
                img = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            if keep_pixels:
                decoded.append(img)
        if keep_pixels and decoded:
            return ImageStore(_stack(decoded), self.names), bad
        return self, bad


def _decode_loader(src: Any, name: str, source: str | None = None) -> np.ndarray:
    """The default loader; ``source`` (a pairs file, bound with functools.partial) names where the images
    come from, for the one warning that they are resized (see :func:`~qfair.data.preprocess.decode_image`)."""
    from .preprocess import decode_image

    return decode_image(src, name=name, source=source)


def path_exists(path: Path) -> bool:
    """``path.is_file()`` that treats unusable names (NUL bytes, too long) as missing instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def make_folds(groups: np.ndarray, n_folds: int = 10) -> np.ndarray:
    """Fold index per pair: within each group, pairs in file order split into ``n_folds`` contiguous folds,
    the first ``n % n_folds`` one pair longer (sklearn ``KFold(shuffle=False)``, the reference code's rule,
    as ``qfair.eval.verification.contiguous_folds``; 6000 pairs -> index // 600, as in LFW/RFW)."""
    groups = np.asarray(groups)
    folds = np.zeros(len(groups), dtype=np.int64)
    for g in dict.fromkeys(groups.tolist()):
        pos = np.flatnonzero(groups == g)
        sizes = np.full(n_folds, len(pos) // n_folds)
        sizes[: len(pos) % n_folds] += 1
        folds[pos] = np.repeat(np.arange(n_folds), sizes)
    return folds


DEFAULT_FOLDS = "default_folds"  # meta key: the reader defined no folds; evaluation's n_folds applies


@dataclass
class VerificationSet:
    """A verification benchmark. ``pairs`` (P, 2) int64 indices into ``images``; ``issame`` (P,) bool;
    ``groups`` (P,) str ("all" when the benchmark has none); ``pair_ids`` (P, 2) str identity labels or
    None; ``folds`` (P,) int. ``meta`` carries provenance (e.g. ``synthetic``, ``skipped_images``)."""

    name: str
    images: ImageStore
    pairs: np.ndarray
    issame: np.ndarray
    groups: np.ndarray
    pair_ids: np.ndarray | None = None
    folds: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.issame = np.asarray(self.issame, dtype=bool).reshape(-1)
        self.groups = np.asarray(self.groups, dtype=str).reshape(-1)
        n = len(self.pairs)
        if len(self.issame) != n or len(self.groups) != n:
            raise DataError(f"{self.name}: {n} pairs but {len(self.issame)} labels and {len(self.groups)} groups")
        if n and (self.pairs.min() < 0 or self.pairs.max() >= len(self.images)):
            raise DataError(f"{self.name}: pair index out of range [0, {len(self.images)})")
        if self.pair_ids is not None:
            self.pair_ids = np.asarray(self.pair_ids, dtype=str).reshape(-1, 2)
            if len(self.pair_ids) != n:
                raise DataError(f"{self.name}: pair_ids has {len(self.pair_ids)} rows for {n} pairs")
        if self.folds is None:  # the format defines none: 10 per group, replaced by evaluation's n_folds
            self.folds = make_folds(self.groups)
            self.meta[DEFAULT_FOLDS] = True
        self.folds = np.asarray(self.folds, dtype=np.int64)
        if len(self.folds) != n:
            raise DataError(f"{self.name}: folds has {len(self.folds)} entries for {n} pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    def group_names(self) -> list[str]:
        """Group names in order of first appearance."""
        return list(dict.fromkeys(self.groups.tolist()))

    def select(self, mask: np.ndarray, *, refold: bool = False) -> VerificationSet:
        """A set with the pairs where ``mask`` is true; unused images dropped and indices remapped."""
        mask = np.asarray(mask, dtype=bool)
        pairs = self.pairs[mask]
        used = np.unique(pairs)
        remap = np.full(len(self.images), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return VerificationSet(
            name=self.name, images=self.images.subset(used), pairs=remap[pairs], issame=self.issame[mask],
            groups=self.groups[mask], pair_ids=None if self.pair_ids is None else self.pair_ids[mask],
            folds=None if refold else self.folds[mask], meta=dict(self.meta))

    def group(self, name: str) -> VerificationSet:
        """The pairs of one group (folds kept)."""
        if name not in self.group_names():
            raise DataError(f"{self.name}: no group '{name}'; groups are {', '.join(self.group_names())}")
        return self.select(self.groups == name)

    def summary(self) -> dict:
        """Counts per group, for logs and reports."""
        out = {"name": self.name, "images": len(self.images), "pairs": len(self), "groups": {}}
        for g in self.group_names():
            m = self.groups == g
            out["groups"][g] = {"pairs": int(m.sum()), "genuine": int(self.issame[m].sum()),
                                "impostor": int((~self.issame[m]).sum())}
        out.update({k: v for k, v in self.meta.items() if isinstance(v, (int, float, str, bool))})
        return out


def finish_validated(vset: VerificationSet, skip_corrupt: bool) -> VerificationSet:
    """Decode every image of a lazily read set once; drop pairs that touch corrupt images when
    ``skip_corrupt`` (counted in ``meta['skipped_images']`` / ``meta['skipped_pairs']``)."""
    store = vset.images
    if not isinstance(store, LazyImageStore):
        return vset
    new_store, bad = store.validate(skip_corrupt=skip_corrupt)
    vset.images = new_store
    vset.meta["skipped_images"] = vset.meta.get("skipped_images", 0) + len(bad)
    if bad:
        badmask = np.zeros(len(new_store), dtype=bool)
        badmask[bad] = True
        drop = badmask[vset.pairs].any(axis=1)
        skipped = vset.meta.get("skipped_pairs", 0) + int(drop.sum())
        vset = vset.select(~drop, refold=True)
        vset.meta["skipped_pairs"] = skipped
        if len(vset) == 0:
            raise DataError(f"{vset.name}: every pair touches a corrupt image; nothing left to evaluate")
    return vset


# --- benchmark registry ---------------------------------------------------------------------------
BENCHMARKS: Registry[Callable[..., VerificationSet]] = Registry("benchmark")


def _lazy_reader(target: str) -> Callable[..., VerificationSet]:
    mod, attr = target.split(":")

    def reader(path: str, **kw: Any) -> VerificationSet:
        return getattr(import_module(mod), attr)(path, **kw)

    reader.__name__ = attr
    reader.__doc__ = f"Lazy reference to {target}."
    return reader


BENCHMARKS.add("bin", _lazy_reader("qfair.data.binfile:read_bin"))
BENCHMARKS.add("rfw", _lazy_reader("qfair.data.rfw:read_rfw"))
BENCHMARKS.add("csv", _lazy_reader("qfair.data.pairs_csv:read_pairs_csv"), aliases=("pairs",))
BENCHMARKS.add("builtin", _lazy_reader("qfair.data.builtin:open_builtin"))


def _infer_kind(path: Path) -> str:
    if path.suffix.lower() == ".bin":
        return "bin"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return "csv"
    if path.is_dir() and ((path / "txts").is_dir() or (path / "test" / "txts").is_dir()):
        return "rfw"
    raise DataError(f"cannot tell the benchmark format of '{path}': use KIND:PATH with a kind from "
                    f"{', '.join(BENCHMARKS.names())} (e.g. bin:{path})")


def _spec_path_exists(spec: str) -> bool:
    try:
        return Path(spec).exists()
    except (OSError, ValueError):  # a NUL byte or a name too long: not a path
        return False


def open_benchmark(spec: str, **kw: Any) -> VerificationSet:
    """Open a benchmark from a spec: ``KIND:PATH`` (kind in :data:`BENCHMARKS`), ``NAME:PATH`` with the
    kind inferred from the path (``lfw:/x/lfw.bin``), a bare path, ``builtin`` or ``builtin:SIZE``.

    The spec is read in this order: (1) ``KIND:PATH`` when the text before the first colon is a
    registered kind, even if a file named like the whole spec exists (read a file literally named
    ``bin:x.bin`` as ``./bin:x.bin``); (2) a bare path when the whole spec exists, so a path with a colon
    in it (``/runs/12:30/lfw.bin``) is not split; (3) ``NAME:PATH``; (4) a kind name without a path.
    """
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    kind = BENCHMARKS.canonical(head) if head in BENCHMARKS else None
    if kind is not None and kind != "builtin" and not rest.strip():
        example = {"rfw": "rfw:/data/RFW", "bin": "bin:/data/lfw.bin", "csv": "csv:pairs.csv"}
        raise DataError(f"benchmark '{spec}' names no path: give the {head} data after a colon, e.g. "
                        f"{example.get(kind, head + ':PATH')}")
    if sep and kind is not None:
        if kind != "builtin" and not _spec_path_exists(rest) and _spec_path_exists(spec):
            raise DataError(f"benchmark '{spec}': read as kind '{head}' with path {rest}, which does not exist; "
                            f"a file named '{spec}' exists: to open it, write ./{spec} (or its absolute path)")
        return BENCHMARKS.get(head)(rest, **kw)
    if sep and _spec_path_exists(spec):  # a bare path with a colon in it
        sep = ""
    if not sep:
        if spec in BENCHMARKS:
            return BENCHMARKS.get(spec)("", **kw)
        path = Path(spec)
        if not path.exists():
            raise DataError(f"benchmark '{spec}' is neither a known kind ({', '.join(BENCHMARKS.names())}) "
                            f"nor an existing path")
        return BENCHMARKS.get(_infer_kind(path))(str(path), **kw)
    path = Path(rest)
    if not path.exists():
        raise DataError(f"benchmark '{spec}': path {rest} does not exist ('{head}' is not a known kind, "
                        f"so it was read as the benchmark's name; kinds: {', '.join(BENCHMARKS.names())})")
    vset = BENCHMARKS.get(_infer_kind(path))(str(path), **kw)
    vset.name = head
    return vset
