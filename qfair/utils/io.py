"""Atomic writes and safe loads.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file that looks complete. Loads never run code:
``torch.load(weights_only=True)``, ``yaml.safe_load``, and restricted unpicklers elsewhere.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import QfairError


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise QfairError(f"cannot write {path}: folder {parent} does not exist. Create it first or pick another path.")
    if not os.access(parent, os.W_OK):
        raise QfairError(f"cannot write {path}: folder {parent} is not writable. Pick another output path.")


@contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mkdir: bool = False) -> Path:
    with atomic_path(path, mkdir=mkdir) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, mkdir: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mkdir=mkdir)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    """JSON text; NaN and inf are written as the strings "nan", "inf", "-inf" (valid JSON)."""
    return json.dumps(_sanitize(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def _sanitize(obj: Any) -> Any:
    import math

    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _sanitize(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mkdir: bool = False) -> Path:
    return atomic_write_text(path, to_json(obj), mkdir=mkdir)


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, mkdir: bool = False) -> Path:
    import torch

    with atomic_path(path, mkdir=mkdir) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def safe_torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain containers only, no code."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise QfairError(f"file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QfairError(
            f"{path}: refused to load. The file holds objects other than tensors and plain containers "
            f"(a checkpoint must not be able to run code), or it is not a torch checkpoint. Details: {exc}"
        ) from exc
    except Exception as exc:  # torch raises many types (IndexError, RuntimeError...) on junk input
        raise QfairError(
            f"{path}: not a readable torch checkpoint (truncated, corrupt, or another format). Details: {exc}"
        ) from exc
