"""Calibration batches from a source spec (the contract's ``qfair.data.calibration_batches``).

Sources: ``real:PATH`` (image folder, RecordIO ``.rec`` / folder with ``train.rec``, or a ``.bin``),
``synthetic:PATH`` (a folder of generated faces, flat or per identity), ``synthetic`` (data-free, from
the model's BatchNorm statistics), ``builtin`` (the built-in benchmark's training domain) and
``builtin-synthetic`` (its synthetic domain, the stand-in for GAN faces), and ``mix:SRC@R|SRC@R``
(e.g. ``mix:real:/data/faces@0.7|synthetic:/data/gan@0.3``: shares of several sources, shuffled).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import DataError, require_module
from ..utils.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

# kind -> fn(path, n, batch_size, model, seed, **kw) -> list of float (B, 3, 112, 112)
CALIB_SOURCES: Registry[Callable[..., list]] = Registry("calibration source")


def _split(images: torch.Tensor, batch_size: int) -> list:
    from .preprocess import to_model_input

    return [to_model_input(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]


def _from_dataset(ds: Any, n: int, batch_size: int, seed: int, num_workers: int = 0,
                  skip_corrupt: bool = False, with_labels: bool = False) -> list:
    import torch

    from .folders import LoaderStats, stream

    if len(ds) < n:
        raise DataError(f"asked for {n} calibration images but the source holds only {len(ds)}; "
                        f"ask for fewer (quantize --calib-size, qat/distill --calib-n) or add images")
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    stats = LoaderStats()
    out = [(x, torch.as_tensor(y)) if with_labels else x
           for x, y in stream(ds, batch_size, indices=idx, num_workers=num_workers, skip_corrupt=skip_corrupt,
                              stats=stats)]
    if with_labels and out and any(bool((y < 0).any()) for _, y in out):  # unlabelled (flat folder): images only
        out = [x for x, _ in out]
    if stats.skipped:
        import warnings

        warnings.warn(f"skipped {stats.skipped} corrupt images; calibrating on {stats.images}", stacklevel=3)
    if not out:
        raise DataError("no readable calibration images")
    return out


@CALIB_SOURCES.register("real")
def _real(path: str, n: int, batch_size: int, model: Any = None, seed: int = 0, **kw: Any) -> list:
    if not path:
        raise DataError("calibration source 'real' needs a path: real:/data/faces_emore (image folder, .rec or .bin)")
    p = Path(path)
    if p.suffix == ".bin":
        from .binfile import read_bin

        vs = read_bin(p, skip_corrupt=kw.get("skip_corrupt", False))
        if len(vs.images) < n:
            raise DataError(f"{p}: asked for {n} calibration images but it holds {len(vs.images)} distinct images")
        idx = np.sort(np.random.default_rng(seed).choice(len(vs.images), size=n, replace=False))
        return _split(vs.images.get_many(idx), batch_size)
    from .folders import ACCEPTED_SOURCES, open_image_source

    if p.is_file() and p.suffix != ".rec":
        raise DataError(f"{p}: exists but is not a folder or a supported calibration file. Accepted: "
                        f"{ACCEPTED_SOURCES}, or a .bin benchmark file")
    try:
        source = open_image_source(p)
    except DataError:  # e.g. loose images beside identity folders: an error only where labels are wanted
        if kw.get("with_labels"):
            raise
        source = open_image_source(p, labelled=False)  # images only: every image counts, none is dropped
    return _from_dataset(source, n, batch_size, seed, **kw)


@CALIB_SOURCES.register("synthetic")
def _synthetic(path: str, n: int, batch_size: int, model: Any = None, seed: int = 0, **kw: Any) -> list:
    if path:
        from .folders import FlatFolder

        return _from_dataset(FlatFolder(path), n, batch_size, seed, **kw)
    if model is None:
        raise DataError("calibration source 'synthetic' without a folder synthesises images from the model's "
                        "BatchNorm statistics, so it needs the model; or give a folder: synthetic:PATH")
    from .synthesis import SynthSettings, synthesize_uint8

    settings = kw.get("synth_settings") or SynthSettings(batch_size=batch_size)
    return _split(synthesize_uint8(model, n, seed=seed, settings=settings, use_cache=kw.get("cache", True)),
                  batch_size)


@CALIB_SOURCES.register("builtin")
def _builtin(path: str, n: int, batch_size: int, model: Any = None, seed: int = 0, **kw: Any) -> list:
    from .builtin import make_calibration

    return _split(make_calibration(n, seed=seed, domain="real"), batch_size)


@CALIB_SOURCES.register("builtin-synthetic")
def _builtin_synthetic(path: str, n: int, batch_size: int, model: Any = None, seed: int = 0, **kw: Any) -> list:
    from .builtin import make_synthetic_domain

    return _split(make_synthetic_domain(n, seed=seed), batch_size)


@CALIB_SOURCES.register("mix")
def _mix(path: str, n: int, batch_size: int, model: Any = None, seed: int = 0, **kw: Any) -> list:
    from .mixing import mix_calibration

    return mix_calibration(path, n, batch_size, model=model, seed=seed, **kw)


IMAGE_BYTES = 3 * 112 * 112 * 4  # one normalised float32 image (3, 112, 112)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages), None if unknown."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(n: int, available: int | None = None) -> None:
    """DataError when ``n`` calibration images (kept as float tensors) would take more than half the memory
    available: the alternative is the kernel killing the process without a word."""
    available = available_memory() if available is None else available
    need = n * IMAGE_BYTES
    if available is not None and need > available // 2:
        fit = max(1, available // 2 // IMAGE_BYTES)
        raise DataError(f"calibration_batches: n={n} images (--calib-size; --data-n in training) would take "
                        f"{need / 2**30:.1f} GiB as float tensors, more than half of the "
                        f"{available / 2**30:.1f} GiB of memory available; calibrate on at most {fit} images here "
                        "(activation ranges settle on a few thousand), or free memory")


def calibration_batches(source: str, n: int, batch_size: int, model: Any = None, seed: int = 0, *,
                        num_workers: int = 0, skip_corrupt: bool = False, with_labels: bool = False,
                        **kw: Any) -> list:
    """``n`` images from ``source`` as a list of normalised float tensors (B, 3, 112, 112) (last batch
    may be smaller). Seeded: the same arguments give the same images.

    Folder / ``.rec`` sources read with ``num_workers`` processes; ``skip_corrupt`` skips unreadable
    images with a warning that counts them (otherwise the error names the file). Data-free
    ``synthetic`` takes ``synth_settings=SynthSettings(...)`` and ``cache=False`` (see
    :func:`qfair.data.synthesis.synthesize_uint8`). ``with_labels``: a labelled ``real:`` source (a ``.rec``
    or an ``<identity>/<image>`` folder) gives ``(images, identity labels (B,))`` tuples instead (KD
    fine-tuning with a margin head); unlabelled sources still give images only."""
    for what, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"calibration_batches: {what} must be a whole number >= 1, got {v!r}")
    check_fits_in_memory(int(n))
    kind, _, path = str(source).partition(":")
    fn = CALIB_SOURCES.get(kind)
    if path and kind in ("builtin", "builtin-synthetic"):
        raise DataError(f"calibration source '{source}': '{kind}' takes no ':{path}' part (benchmark sizes such as "
                        f"builtin:tiny are for --bench / open_benchmark); give '{kind}' and set the number of "
                        f"images with n (--calib-size)")
    if model is not None:
        require_module(model, "calibration_batches: model must be", error=DataError)
    if (kind in ("real", "synthetic") and path) or kind == "mix":
        # mix passes them on to each of its sources (calibration_batches again)
        kw.update(num_workers=num_workers, skip_corrupt=skip_corrupt)
    if with_labels and kind == "real" and path and Path(path).suffix != ".bin":  # a .bin holds no identities
        kw.update(with_labels=True)
    return fn(path, n, batch_size, model=model, seed=seed, **kw)
