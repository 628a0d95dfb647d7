"""insightface ``.bin`` verification files (lfw, cfp_fp, agedb_30, calfw, cplfw, per-race RFW), README references [4].

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (bytes or 1-D uint8
arrays), pair i = ``(bins[2i], bins[2i+1])``. A pickle can run arbitrary code when loaded, so
:func:`read_bin` uses a restricted unpickler that can only build bytes, str, lists, tuples, bools,
numbers and numpy uint8/bool arrays; any other global (``os.system``, ``builtins.exec`` ...) is refused
with :class:`UnsafeFileError` *before* it is called.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..utils.errors import DataError, UnsafeFileError
from .verification import LazyImageStore, VerificationSet, finish_validated

RFW_RACES = ("African", "Asian", "Caucasian", "Indian")
# Plain integer and bool dtypes only (images are uint8; some writers store issame as int64 0/1).
_ALLOWED_DTYPES = {"uint8", "bool", "?", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64"} | {
    f"{order}{kind}{size}" for order in ("", "|", "<", ">") for kind in ("u", "i") for size in (1, 2, 4, 8)} | {
    "b1", "|b1"}
_DTYPE_RULE = "a .bin file may only hold integer or bool arrays"


def _safe_dtype(spec: Any, *args: Any) -> np.dtype:
    s = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(s, str) or s not in _ALLOWED_DTYPES:
        raise UnsafeFileError(f"refused numpy dtype {spec!r}: {_DTYPE_RULE}")
    return np.dtype(s)


def _ndarray_marker(*_: Any, **__: Any) -> None:
    """Stands for ``numpy.ndarray`` inside a pickle: only :func:`_safe_reconstruct` accepts it, calling it
    is refused (``numpy.ndarray(shape)`` would let a file allocate any amount of memory)."""
    raise UnsafeFileError("refused a direct numpy.ndarray(...) call in a .bin file")


def _safe_bytearray(data: Any = b"", *args: Any) -> bytearray:
    if not isinstance(data, (bytes, str)):  # bytearray(10**12) would allocate a terabyte
        raise UnsafeFileError("refused bytearray(...) with a non-bytes argument in a .bin file")
    return bytearray(data.encode("latin1") if isinstance(data, str) else data)


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if not (isinstance(subtype, _FileCallable) and subtype.wraps(_ndarray_marker)):
        raise UnsafeFileError(f"refused array subtype {subtype!r} in a .bin file")
    # an empty uint8 array; pickle's BUILD then calls ndarray.__setstate__ with a dtype that
    # _safe_dtype already restricted to uint8/bool
    return np.ndarray.__new__(np.ndarray, (0,), np.dtype("u1"))


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    _check_dtype(dtype)
    if not isinstance(data, (bytes, str)) or len(data) != dtype.itemsize:
        raise DataError("malformed numpy scalar in .bin file")
    raw = data.encode("latin1") if isinstance(data, str) else data
    return np.frombuffer(raw, dtype=dtype)[0]


def _check_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in ("b", "u", "i") or dtype.itemsize > 8 \
            or dtype.fields is not None or dtype.hasobject or dtype.subdtype is not None:
        raise UnsafeFileError(f"refused numpy dtype {dtype!r}: {_DTYPE_RULE}")
    return dtype


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    # protocol-5 pickles of numpy arrays: numpy._core.numeric._frombuffer(buffer, dtype, shape, order)
    if not isinstance(buf, (bytes, bytearray)):
        raise DataError("malformed numpy array in .bin file")
    arr = np.frombuffer(bytes(buf), dtype=_check_dtype(dtype))
    try:
        return arr.reshape(tuple(int(s) for s in shape), order="F" if order == "F" else "C")
    except (TypeError, ValueError) as exc:
        raise DataError(f"malformed numpy array in .bin file ({exc})") from None


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", *_: Any) -> bytes:
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeFileError("refused _codecs.encode call with unexpected arguments in a .bin file")
    return obj.encode(encoding)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _ndarray_marker,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("__builtin__", "bytearray"): _safe_bytearray,
    ("builtins", "bytearray"): _safe_bytearray,
}


class _FileCallable:
    """What a pickle gets for an allowed global: a stand-in made for one load that can only be called.

    The real loader functions never reach the file's opcodes: pickle's BUILD (``__setstate__``, or
    setting attributes such as ``__defaults__`` / ``__code__``) on a global would otherwise let a crafted
    ``.bin`` rewrite qfair's own loaders for every later load in the process. Here BUILD and attribute
    changes are refused, and the stand-ins are thrown away with the unpickler."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Any, name: str) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def wraps(self, fn: Any) -> bool:
        return self._fn is fn

    def _refuse(self, *_: Any) -> None:
        raise UnsafeFileError(f"refused to modify '{self._name}' (pickle BUILD or attribute assignment on a "
                              f"function): a .bin file may only hold images and labels, and this one tries to "
                              f"change code. Do not use this file.")

    __setstate__ = _refuse
    __setattr__ = _refuse
    __delattr__ = _refuse

    def __reduce__(self) -> Any:
        raise TypeError("a .bin loader stand-in cannot be pickled")

    def __repr__(self) -> str:
        return f"<.bin loader {self._name}>"


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain data; every other global is refused before anything can call it. The allowed
    globals are handed out as :class:`_FileCallable` stand-ins made for this unpickler alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._globals = {key: _FileCallable(fn, ".".join(key)) for key, fn in _ALLOWED_GLOBALS.items()}

    def find_class(self, module: str, name: str) -> Any:
        fn = self._globals.get((module, name))
        if fn is None:
            raise UnsafeFileError(f"refused to load '{module}.{name}': a .bin file may only hold images and "
                                  f"labels, and this one tries to call code. Do not use this file.")
        return fn

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError("refused a persistent id in a .bin file (not a plain data pickle)")


def restricted_loads(data: bytes, *, where: str = "<bytes>") -> Any:
    """Unpickle plain data (see module docstring); :class:`UnsafeFileError` for code, DataError for junk."""
    return restricted_load(io.BytesIO(data), where=where)


def restricted_load(file: BinaryIO, *, where: str = "<file>") -> Any:
    """:func:`restricted_loads` from an open binary file, read as it goes: a 400 MB ``.bin`` is not held
    in memory twice (once as raw bytes, once as the images unpickled from them)."""
    try:
        return _RestrictedUnpickler(file, encoding="bytes").load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{where}: {exc}") from None
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{where}: not a valid .bin file (pickle nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickles raise many different types
        raise DataError(f"{where}: not a valid .bin file (cannot unpickle: {type(exc).__name__}: {exc})") from None


def _as_image_bytes(item: Any, i: int, where: str) -> bytes | np.ndarray:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.dtype.fields is None \
            and item.ndim in (1, 3) and (item.ndim == 1 or item.shape[-1] == 3):
        return item.tobytes() if item.ndim == 1 else item
    raise DataError(f"{where}: image {i} is a {type(item).__name__}, expected encoded image bytes")


def _group_from_name(path: Path) -> str:
    for race in RFW_RACES:
        if path.stem.lower().startswith(race.lower()):
            return race
    return "all"


def read_bin(path: str | Path, *, name: str | None = None, group: str | None = None,
             skip_corrupt: bool = False, validate: bool = True) -> VerificationSet:
    """Read an insightface ``.bin`` as a :class:`VerificationSet`.

    Identical encoded images are stored once. ``group`` defaults to the RFW race in the file name
    (``African_test.bin`` -> "African") or "all". Every image is decoded once here (``validate``) so a
    corrupt one is reported now, naming its position; ``skip_corrupt`` drops the pairs that use it and
    counts them in ``meta``. ``pair_ids`` is None: .bin files carry no identity labels.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{where}: .bin file not found")
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, where=where)
    except OSError as exc:
        raise DataError(f"{where}: cannot read the .bin file ({exc.strerror})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{where}: expected a pickle of (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(issame, np.ndarray):
        issame = issame.tolist()
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataError(f"{where}: expected (list of images, list of bools)")
    if len(bins) != 2 * len(issame) or not issame:
        raise DataError(f"{where}: {len(bins)} images for {len(issame)} pairs (need exactly 2 per pair, >= 1 pair)")
    labels = []
    for i, s in enumerate(issame):
        if not isinstance(s, (bool, np.bool_, int, np.integer)) or int(s) not in (0, 1):
            raise DataError(f"{where}: issame_list[{i}] = {s!r} is not a boolean")
        labels.append(bool(s))
    index: dict[bytes, int] = {}
    sources: list[Any] = []
    names: list[str] = []
    ids = np.empty(len(bins), dtype=np.int64)
    for i, item in enumerate(bins):
        src = _as_image_bytes(item, i, where)
        key = hashlib.blake2b(src if isinstance(src, bytes) else src.tobytes(), digest_size=16).digest()
        if key not in index:
            index[key] = len(sources)
            sources.append(src)
            names.append(f"{where}[image {i}]")
        ids[i] = index[key]
    grp = group or _group_from_name(path)
    vset = VerificationSet(name=name or path.stem, images=LazyImageStore(sources, names),
                           pairs=ids.reshape(-1, 2), issame=np.array(labels), groups=np.full(len(labels), grp),
                           pair_ids=None, meta={"source": where, "format": "bin"})
    return finish_validated(vset, skip_corrupt) if validate else vset


def write_bin(path: str | Path, images: Sequence[Any], issame: Sequence[bool], *, fmt: str = "png",
              as_arrays: bool = False, protocol: int = 4) -> Path:
    """Write a ``.bin`` (for tests and for users converting their own benchmark).

    ``images``: 2N items, each encoded bytes or a uint8 ``(H, W, 3)`` array (encoded as ``fmt``);
    ``as_arrays`` stores the encoded bytes as 1-D uint8 numpy arrays, as some tools do.
    """
    from ..utils.io import atomic_write_bytes
    from .preprocess import encode_jpeg, encode_png

    if len(images) != 2 * len(issame):
        raise DataError(f"write_bin: {len(images)} images for {len(issame)} pairs")
    enc = encode_png if fmt == "png" else encode_jpeg
    bins: list[Any] = []
    for img in images:
        b = bytes(img) if isinstance(img, (bytes, bytearray)) else enc(np.asarray(img))
        bins.append(np.frombuffer(b, dtype=np.uint8).copy() if as_arrays else b)
    data = pickle.dumps((bins, [bool(s) for s in issame]), protocol=protocol)
    return atomic_write_bytes(path, data)
