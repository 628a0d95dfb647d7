"""The teacher side: loading checks, embedding-size checks and precomputed (cached) embeddings.

The distillation study computes the teacher's embeddings once (README references [6]). A
:class:`TeacherCache` holds them for every image of an indexed source (and for its mirror image when
the source flips), L2-normalised, stored on disk as ``<key>.pt`` where the key hashes the teacher's
weights and the training images, so a different teacher or data set never reuses a stale file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.digest import model_digest, tensor_digest
from ..utils.errors import ConfigError, DataError, QfairError
from ..utils.io import atomic_torch_save, safe_torch_load


def embedding_size(model: nn.Module) -> int | None:
    """The model's declared ``embedding_size`` (qfair models all have one), else None."""
    for m in (model, getattr(model, "module", None)):
        size = getattr(m, "embedding_size", None) if m is not None else None
        if isinstance(size, int):
            return size
    return None


def check_pair(student: nn.Module, teacher: nn.Module, projection: nn.Module | None = None) -> None:
    """Raise ConfigError before training when student and teacher embeddings cannot be compared."""
    s, t = embedding_size(student), embedding_size(teacher)
    if projection is not None:
        out = getattr(projection, "out_features", None)
        inp = getattr(projection, "in_features", None)
        if s is not None and inp is not None and inp != s:
            raise ConfigError(f"projection takes {inp}-d input but the student embeds in {s}-d")
        s = out if out is not None else s
    if s is not None and t is not None and s != t:
        raise ConfigError(
            f"student embeddings are {s}-d but the teacher's are {t}-d: distillation compares them directly. "
            "Use a student with the teacher's embedding size, or enable a projection (distill --projection)")


_DIGEST_CHUNK = 256  # images per chunk when hashing a store that is not one tensor


def _fingerprint_part(h: hashlib._Hash, p: Any) -> None:
    """Feed the images of one indexed source into ``h``: every image's shape, dtype and bytes, so two stores
    with different pictures never share a key. A tensor store read by the stock ``load`` is hashed as it is
    stored; another store (a list, a lazy reader) read by the stock ``load`` is hashed by its stored values in
    chunks (one pass over the images); a source with its own ``load`` is hashed as the teacher will see it
    (``p.load`` over every index, in chunks)."""
    from .batches import IndexedSource

    n = len(p)
    stock_load = getattr(type(p), "load", None) is IndexedSource.load
    if isinstance(p.images, torch.Tensor) and stock_load:
        tensor_digest(h, p.images)
        return
    h.update(f"store:{n}:{_DIGEST_CHUNK}:{'raw' if stock_load else 'loaded'}:".encode())
    for lo in range(0, n, _DIGEST_CHUNK):
        idx = range(lo, min(lo + _DIGEST_CHUNK, n))
        # the stock load is a fixed function of the stored values: hash those (uint8: 4x fewer bytes than floats)
        chunk = (torch.stack([torch.as_tensor(p.images[i]) for i in idx]) if stock_load
                 else p.load(torch.tensor(list(idx), dtype=torch.long)))
        if not isinstance(chunk, torch.Tensor):
            raise DataError(f"cannot fingerprint the training images for the teacher cache: {type(p).__name__}.load "
                            f"returned {type(chunk).__name__}, not a tensor")
        tensor_digest(h, chunk)


def source_digest(source: Any) -> str:
    """24 hex digits of sha256 over the images of an IndexedSource / MixedSource (both parts, in order).

    Every store is hashed by content, so two sources with different pictures never share a key (a store that
    is not one tensor costs a pass over its images; see :func:`_fingerprint_part`)."""
    h = hashlib.sha256()
    parts = [source.first, source.second] if hasattr(source, "first") else [source]
    for p in parts:
        _fingerprint_part(h, p)
    return h.hexdigest()[:24]


def _ordered_images(source: Any, flip: bool, batch_size: int):
    """Yield (global indices, images) over the whole source in index order."""
    parts = [source.first, source.second] if hasattr(source, "first") else [source]
    offset = 0
    for p in parts:
        for lo in range(0, len(p), batch_size):
            idx = torch.arange(lo, min(lo + batch_size, len(p)))
            imgs = p.load(idx)
            yield idx + offset, (imgs.flip(-1) if flip else imgs)
        offset += len(p)


def _read_cache(path: Path, n: int, flips: bool) -> dict[str, Any] | None:
    """A cache file's contents, or None (with a warning; it is then rebuilt) when it is damaged or does not fit."""
    try:
        doc = safe_torch_load(path)
        ok = (isinstance(doc, dict) and isinstance(doc.get("plain"), torch.Tensor) and doc["plain"].dim() == 2
              and len(doc["plain"]) == n and (not flips or isinstance(doc.get("flipped"), torch.Tensor)))
    except QfairError as exc:
        ok, doc = False, str(exc)
    if ok:
        return doc
    import warnings

    warnings.warn(f"teacher embedding cache {path} is damaged or does not fit the training data; computing it again",
                  stacklevel=3)
    return None


class TeacherCache:
    """Unit teacher embeddings (N, D) (and (N, D) of flipped images) looked up by dataset index."""

    def __init__(self, plain: torch.Tensor, flipped: torch.Tensor | None = None, key: str = "") -> None:
        self.plain, self.flipped, self.key = plain, flipped, key

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, source: Any, cache_dir: str | Path | None = None, *,
              batch_size: int = 64, device: str | torch.device | None = None) -> TeacherCache:
        """Compute (or load from ``cache_dir``) the teacher embeddings of every image of ``source``.

        The teacher runs on ``device`` (None: the device its weights are on) and is moved back to where it was
        afterwards; the embeddings are kept (and stored) on the CPU."""
        if not hasattr(source, "load") and not hasattr(source, "first"):
            raise DataError("teacher embeddings can be cached only for indexed sources (image tensors or stores)")
        flips = bool(getattr(source, "hflip", False) or getattr(getattr(source, "first", None), "hflip", False))
        key = f"{model_digest(teacher)}-{source_digest(source)}-{'f' if flips else 'n'}"
        path = Path(cache_dir) / f"teacher-{key}.pt" if cache_dir else None
        if path is not None and path.exists():
            cached = _read_cache(path, len(source), flips)
            if cached is not None:
                return cls(cached["plain"], cached.get("flipped"), key)
        was = teacher.training
        home = next(iter(teacher.parameters()), None)
        home = home.device if home is not None else torch.device("cpu")
        device = home if device is None else torch.device(device)
        teacher.eval()
        outs = []
        try:
            teacher.to(device)
            for flip in ([False, True] if flips else [False]):
                embs = [torch.nn.functional.normalize(teacher(x.to(device)).float(), dim=1).cpu()
                        for _, x in _ordered_images(source, flip, batch_size)]
                outs.append(torch.cat(embs))
        finally:
            teacher.to(home).train(was)
        cache = cls(outs[0], outs[1] if flips else None, key)
        if path is not None:
            atomic_torch_save({"plain": cache.plain, "flipped": cache.flipped, "key": key}, path, mkdir=True)
        return cache

    def lookup(self, index: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) indices [and (B,) flip flags] -> (B, D) unit embeddings."""
        out = self.plain[index]
        if flipped is not None and bool(flipped.any()):
            if self.flipped is None:
                raise DataError("the teacher cache holds no flipped embeddings; rebuild it with the flipping source")
            out[flipped] = self.flipped[index[flipped]]
        return out
