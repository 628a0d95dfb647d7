"""Embeddings of a verification set: every distinct image once, flip test-time augmentation
(README references [3]: normalize(f(x) + f(flip x))), NaN checks that name the images, and an on-disk
cache keyed by (model fingerprint, benchmark fingerprint, flip).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import DataError
from ..utils.io import atomic_path
from ..utils.progress import track
from .backends import Backend, make_backend


def check_pairs(vset: Any) -> np.ndarray:
    """The pair index array (P, 2) int64, after checking that every index names an existing image."""
    pairs = np.asarray(vset.pairs)
    n_img = len(vset.images)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise DataError(f"{vset.name}: pairs must be an integer array (P, 2), got {pairs.dtype} {pairs.shape}")
    bad = np.flatnonzero(((pairs < 0) | (pairs >= n_img)).any(axis=1))
    if len(bad):
        shown = ", ".join(f"pair {i} -> images {pairs[i].tolist()}" for i in bad[:5])
        raise DataError(f"{vset.name}: {len(bad)} pair(s) refer to images that do not exist (the set has {n_img} "
                        f"images, indices 0..{n_img - 1}): {shown}. Check the pairs file against the image list.")
    return pairs.astype(np.int64)


def _hash_source_part(h: Any, part: Any) -> None:
    """Add one part of a lazy image source to the fingerprint: a file by its path, size and mtime (no
    decoding), an array by its bytes, anything else by its repr."""
    if isinstance(part, (str, os.PathLike)):
        path = Path(part)
        try:
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        except (OSError, ValueError):
            h.update(f"{path}|missing".encode())
    elif isinstance(part, np.ndarray):
        h.update(f"{part.dtype}|{part.shape}".encode())
        h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(repr(part).encode())


def benchmark_fingerprint(vset: Any) -> str:
    """Identifies a verification set for the embedding cache: name, pairs, labels, image names, and the
    images themselves, unless the set provides ``fingerprint()`` itself.

    Images held in memory are hashed in full (about 1 s per GB; embedding them costs far more), so
    editing any image (re-aligning a few faces, say) gives new embeddings. Lazily read images are
    identified by their files' size and modification time (a stat each, no decoding) plus a sample of
    16 decoded images spread over the set."""
    own = getattr(vset, "fingerprint", None)
    if callable(own):
        return str(own())
    images = vset.images
    h = hashlib.sha256(f"{vset.name}|{len(images)}".encode())
    h.update(np.ascontiguousarray(np.asarray(vset.pairs, dtype=np.int64)).tobytes())
    h.update(np.asarray(vset.issame, dtype=np.uint8).tobytes())
    names = getattr(images, "names", None)
    if names is not None:
        h.update("\0".join(map(str, names)).encode())
    pixels = getattr(images, "_images", None)  # qfair.data.ImageStore: one uint8 tensor in memory
    if pixels is None and hasattr(images, "shape") and hasattr(images, "dtype"):
        pixels = images  # a bare uint8 array / tensor (N, 3, H, W)
    if pixels is not None:
        arr = pixels.detach().cpu().contiguous().numpy() if hasattr(pixels, "detach") else np.asarray(pixels)
        h.update(f"{arr.dtype}|{arr.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        return h.hexdigest()[:32]
    sources = getattr(getattr(images, "_ds", None), "sources", None)  # qfair.data.LazyImageStore
    for src in sources if sources is not None else []:
        # every part of a source: RFW's are (image path, its landmarks, the landmark file), and new
        # landmarks re-align the face as surely as new pixels
        for part in src if isinstance(src, (tuple, list)) else (src,):
            _hash_source_part(h, part)
    n = len(images)
    for i in np.unique(np.linspace(0, n - 1, min(n, 16)).astype(int)) if n else []:
        h.update(np.asarray(images[int(i)]).tobytes())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    """``$QFAIR_CACHE/embeddings``, else ``$QFAIR_CACHE_DIR/embeddings`` (the variable the synthesis cache
    reads, so one setting moves both), else ``~/.cache/qfair/embeddings``."""
    cache_dir = os.environ.get("QFAIR_CACHE_DIR")
    root = (os.environ.get("QFAIR_CACHE") or (cache_dir if cache_dir and cache_dir.lower() != "off" else None)
            or str(Path.home() / ".cache" / "qfair"))
    return Path(root) / "embeddings"


def _image_label(vset: Any, i: int) -> str:
    names = getattr(vset.images, "names", None)
    return f"#{i} ({names[i]})" if names is not None and i < len(names) else f"#{i}"


def _batches(vset: Any, needed: np.ndarray, batch_size: int):
    """(indices (B,) numpy, float (B, 3, 112, 112) tensor) over the needed images."""
    images = vset.images
    if len(needed) == len(images) and hasattr(images, "batches"):
        for idx, x in images.batches(batch_size):
            yield np.asarray(idx), x
        return
    import torch

    from ..data.preprocess import to_model_input

    for s in range(0, len(needed), batch_size):
        idx = needed[s:s + batch_size]
        if hasattr(images, "get_many"):
            raw = images.get_many(idx.tolist())
        else:
            raw = torch.stack([torch.as_tensor(images[int(i)]) for i in idx])
        yield idx, to_model_input(raw)


def embed(backend_or_model: Any, vset: Any, flip: bool = True, batch_size: int = 64,
          cache_dir: str | os.PathLike | None = None, backend: str | None = None) -> np.ndarray:
    """Unit-norm float32 embeddings ``(N_images, D)`` of the images used by ``vset``'s pairs.

    Each distinct image is embedded once (rows of unused images are NaN). With ``cache_dir`` the
    result is stored as ``<key>.npy`` and reused by later calls with the same model, benchmark and flip.
    Non-finite or zero embeddings raise :class:`DataError` naming the images and pairs concerned.
    """
    import torch

    be: Backend = make_backend(backend_or_model, backend)
    pairs = check_pairs(vset)
    needed = np.unique(pairs.reshape(-1))
    n_img = len(vset.images)
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{be.fingerprint()}|{benchmark_fingerprint(vset)}|flip={bool(flip)}".encode())
        cache_file = Path(cache_dir) / f"{key.hexdigest()[:40]}.npy"
        if cache_file.is_file():
            try:
                cached = np.load(cache_file, allow_pickle=False)
                if cached.ndim == 2 and len(cached) == n_img and np.isfinite(cached[needed]).all():
                    return cached
            except (OSError, ValueError):
                pass  # unreadable or stale cache file: recompute and overwrite it
    out: np.ndarray | None = None
    bad: list[int] = []
    with be:
        n_batches = (len(needed) + batch_size - 1) // batch_size
        for idx, x in track(_batches(vset, needed, batch_size), f"embedding {vset.name}", total=n_batches):
            f = np.asarray(be.embed_batch(x), dtype=np.float64)
            if flip:  # README references [3]: sum raw embeddings of the image and its mirror, then normalise
                f = f + np.asarray(be.embed_batch(torch.flip(x, dims=[3])), dtype=np.float64)
            if out is None:
                out = np.full((n_img, f.shape[1]), np.nan, dtype=np.float32)
            norm = np.linalg.norm(f, axis=1, keepdims=True)
            broken = ~np.isfinite(f).all(axis=1) | (norm[:, 0] == 0) | ~np.isfinite(norm[:, 0])
            bad.extend(np.asarray(idx)[broken].tolist())
            with np.errstate(invalid="ignore", divide="ignore"):
                out[np.asarray(idx)] = (f / norm).astype(np.float32)
    if out is None:
        raise DataError(f"{vset.name}: no images to embed")
    if bad:
        where = {i: np.flatnonzero((pairs == i).any(axis=1))[:3].tolist() for i in bad[:10]}
        shown = "; ".join(f"image {_image_label(vset, i)} (pairs {where[i]})" for i in bad[:10])
        raise DataError(f"{vset.name}: the model produced NaN/inf or all-zero embeddings for {len(bad)} image(s): "
                        f"{shown}{' ...' if len(bad) > 10 else ''}. Check these images and the model "
                        f"(a quantized model with bad ranges can overflow).")
    if cache_file is not None:
        with atomic_path(cache_file, mkdir=True) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out, allow_pickle=False)
    return out
