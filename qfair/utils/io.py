"""Atomic writes and safe loads.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file that looks complete. Loads never run code:
``torch.load(weights_only=True)``, ``yaml.safe_load``, and restricted unpicklers elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import QfairError


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise QfairError(f"cannot write {path}: folder {parent} does not exist. Create it first or pick another path.")
    if not parent.is_dir():
        raise QfairError(f"cannot write {path}: {parent} is not a folder. Pick another output path.")
    if not os.access(parent, os.W_OK):
        raise QfairError(f"cannot write {path}: folder {parent} is not writable. Pick another output path.")


def _kind(mode: int) -> str:
    """What a non-regular file is, in words (for error messages)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (fifo)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def output_file(path: str | os.PathLike, *, mkdir: bool = False) -> Path:
    """The real file an output written to ``path`` lands in; raise QfairError when it cannot be a file.

    A symlink is followed (the file it points to is replaced, the link is kept). An existing target that
    is not a regular file (a directory, device, fifo or socket) is an error naming the path: qfair
    replaces output files atomically and never replaces such a thing. Call it before long work so a bad
    output path fails at once; :func:`atomic_path` calls it again before writing.
    """
    path = Path(path)
    real = Path(os.path.realpath(path))
    shown = str(path) if real == path.absolute() else f"{path} (-> {real})"
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        blocker = next((p for p in real.parents if p.exists() and not p.is_dir()), None)
        raise QfairError(f"cannot write {shown}: {blocker or real.parent} is a file, not a folder. Pick another "
                         "output path.") from None
    except OSError as exc:
        raise QfairError(f"cannot write {shown}: {exc.strerror}. Pick another output path.") from None
    if mode is not None and not stat.S_ISREG(mode):
        hint = "pass a file path (e.g. one inside that folder)" if stat.S_ISDIR(mode) else "pick another output path"
        raise QfairError(f"cannot write {shown}: it is {_kind(mode)}, not a regular file; qfair only replaces "
                         f"regular files. Nothing was written: {hint}.")
    if mkdir:
        real.parent.mkdir(parents=True, exist_ok=True)
    _check_parent(real)
    return real


def output_folder(path: str | os.PathLike, *, create: bool = True) -> Path:
    """The output folder ``path``, created with its parents when ``create``; raise QfairError, naming the
    path, when it or an ancestor exists and is not a folder. With ``create=False`` nothing is created:
    call it so before long work, so a bad output path fails at once."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "it exists" if existing == path else f"{existing} exists"
        raise QfairError(f"cannot write into folder {path}: {what} and is not a folder. Nothing was written: "
                         "pass a folder path (it is created if missing).")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QfairError(f"cannot create folder {path}: {exc.strerror}. Pick another output path.") from None
    return path


# Temporary files of atomic writes: ".<name>.<8 random characters>.tmp" beside the destination. A process
# killed hard (SIGKILL, node failure) leaves them behind; remove_stale_temps() finds them by this pattern.
_TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk, so that a rename over an older file never publishes an empty or
    partial file after a crash of the machine (a marker written later must not outlive the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside folder ``path`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched (a process killed
    hard leaves the temporary file: see :func:`remove_stale_temps`). A symlink ``path`` is written
    through (the file it points to is replaced atomically); an existing ``path`` that is a directory,
    device, fifo or socket is a :class:`QfairError` (see :func:`output_file`).
    """
    real = output_file(path, mkdir=mkdir)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=_TEMP_SUFFIX, dir=real.parent)
    os.close(fd)
    os.chmod(tmp, _mode_for(real))  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, real)
        _fsync_dir(real.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _mode_for(real: Path) -> int:
    """The permissions ``open(real, "w")`` would leave: an existing file keeps its own (a private 0600
    checkpoint stays private), a new one gets 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def is_stale_temp(path: Path) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_path`."""
    return bool(_TEMP_RE.match(path.name))


def remove_stale_temps(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed hard left in ``folders`` (not below them); return them.

    Only call it while no other process writes into these folders (a study holds its folder's lock): the
    temporary file of a write in progress would be deleted under it."""
    removed: list[Path] = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for p in sorted(Path(folder).glob(f"*{_TEMP_SUFFIX}")):
            if is_stale_temp(p) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mkdir: bool = False) -> Path:
    with atomic_path(path, mkdir=mkdir) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
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
    if hasattr(obj, "tolist") and hasattr(obj, "ndim"):  # numpy arrays, torch tensors: their NaN/inf too
        return _sanitize(obj.tolist())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mkdir: bool = False) -> Path:
    return atomic_write_text(path, to_json(obj), mkdir=mkdir)


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, mkdir: bool = False) -> Path:
    import torch

    with atomic_path(path, mkdir=mkdir) as tmp:
        # through a file object: given a path, torch names the archive's records after the file (here the
        # random temporary name), so the same tensors would give different bytes on every save
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    return Path(path)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTOCOL = 0x80  # first byte of a pickle (protocol >= 2): torch.save's legacy format
# lines of torch's messages that advise switching the safety check off or allow-listing code: never relayed
_TORCH_ADVICE = ("weights_only", "weights only load failed", "safe_globals", "trusted source", "re-running",
                 "check the documentation", "https://", "file a bug")


def _short_cause(exc: BaseException) -> str:
    """The first informative sentence of a torch.load error, without torch's advice and boilerplate."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not any(a in line.lower() for a in _TORCH_ADVICE)]
    if not kept:
        return type(exc).__name__
    first = re.split(r"(?<=[.!])\s+(?=[A-Z(])", kept[0])[0].rstrip(".")
    return first if len(first) <= 200 else first[:197] + "..."


def _looks_like_onnx(path: Path, head: bytes) -> bool:
    """Whether ``path`` is an ONNX graph: the .onnx extension, or (when the onnx package is installed) a
    file that parses as an ONNX model with a graph."""
    if path.suffix.lower() == ".onnx":
        return True
    if not head or head[0] != 0x08:  # an ONNX ModelProto starts with its ir_version field
        return False
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not installed, or not a protobuf: not ONNX
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _not_a_checkpoint(path: Path, head: bytes) -> str | None:
    """Why ``path`` is not a torch checkpoint at all (judged by its first bytes); None when it could be one."""
    if head.startswith(_ZIP_MAGIC) or (head and head[0] == _PICKLE_PROTOCOL):
        return None
    if not head:
        return f"{path} is empty (0 bytes), not a PyTorch checkpoint; it was probably cut short: save or copy it again."
    if _looks_like_onnx(path, head):
        return (f"{path} is an ONNX graph, not a PyTorch checkpoint. Evaluate it with `qfair evaluate {path} "
                "--backend onnxruntime` (the default for .onnx files); quantize and export need the PyTorch "
                "checkpoint (model.pt).")
    try:
        text = head.decode("utf-8")
        looks = f" (it looks like a text file starting {text.splitlines()[0][:40]!r})" if text.strip() else ""
    except UnicodeDecodeError:
        looks = ""
    return (f"{path} is not a PyTorch checkpoint: it is neither a zip archive nor a pickle file, the formats "
            f"torch.save writes{looks}. Pass the .pt/.pth file written by torch.save.")


def safe_torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain containers only, no code.

    Errors say what the file is when it is not a checkpoint (empty, ONNX graph, text or other format) and
    give torch's short cause otherwise, never torch's advice to switch the safety check off."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise QfairError(f"file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types (KeyError, RuntimeError...) on junk input
        with open(path, "rb") as f:
            head = f.read(64)
        other = _not_a_checkpoint(path, head)
        if other is not None:
            raise QfairError(other) from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise QfairError(
                f"{path}: refused to load. The file holds objects other than tensors and plain containers "
                f"(a checkpoint must not be able to run code), or it is damaged. Cause: {_short_cause(exc)}. "
                "Pass a checkpoint that holds only weights (torch.save(model.state_dict(), PATH))."
            ) from exc
        raise QfairError(f"{path}: not a readable torch checkpoint (truncated or corrupt). Cause: "
                         f"{_short_cause(exc)}. Save or copy the file again.") from exc
