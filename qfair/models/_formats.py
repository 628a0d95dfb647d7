"""Reading weight files that are not plain ``torch.save`` state dicts, and saying what a refused file is.

- safetensors (``.safetensors``, or any file that starts like one): read here without the safetensors
  package. The format is an 8-byte little-endian header length, a JSON header mapping each name to
  ``{dtype, shape, data_offsets}``, then raw little-endian bytes; reading it cannot run code.
- A refused torch file is diagnosed without unpickling anything: ``pickletools`` lists the classes its
  pickle would import, so the error can say "a whole pickled model of class X" or "a TorchScript
  archive" and give the one-line conversion to a state dict.
"""
from __future__ import annotations

import io
import json
import pickletools
import shlex
import struct
import zipfile
from pathlib import Path

import torch

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_MAX_HEADER = 100 * 2**20  # the safetensors specification caps the header at 100 MB


def looks_like_safetensors(path: Path) -> bool:
    """``.safetensors`` extension, or a first 9 bytes of (plausible header length, '{')."""
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= min(_ST_MAX_HEADER, path.stat().st_size - 8)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (CPU, the dtype stored). Raises ValueError on a malformed file."""
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
    n = struct.unpack("<Q", data[:8])[0]
    if n > min(_ST_MAX_HEADER, len(data) - 8):
        raise ValueError(f"header length {n} does not fit in the {len(data)}-byte file (truncated?)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    body = memoryview(data)[8 + n:]
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name != "__metadata__":
            out[name] = _st_tensor(name, info, body)
    return out


def _st_ints(name: str, field: str, values: object) -> list[int]:
    """A header list of non-negative integers (a shape or the data offsets); ValueError naming the tensor
    otherwise: a negative, fractional or boolean size would be reshaped wrongly or silently truncated."""
    if not isinstance(values, list) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"tensor {name!r}: {field} {values!r} is not a list of non-negative integers")
    return values


def _st_tensor(name: str, info: object, body: memoryview) -> torch.Tensor:
    """One tensor of a safetensors body, checked against its header entry ``info``."""
    if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
        raise ValueError(f"tensor {name!r}: unsupported or malformed entry {info!r}")
    dtype = _ST_DTYPES[info["dtype"]]
    shape = _st_ints(name, "shape", info.get("shape"))
    offsets = _st_ints(name, "data_offsets", info.get("data_offsets"))
    if len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} must be [start, end]")
    start, end = offsets
    numel = 1
    for s in shape:
        numel *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not start <= end <= len(body) or end - start != numel * itemsize:
        raise ValueError(f"tensor {name!r}: byte range [{start}, {end}) does not hold {shape} {info['dtype']} "
                         f"values in a {len(body)}-byte body (truncated?)")
    raw = bytearray(body[start:end])  # a copy: the tensor owns its memory
    t = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return t.reshape(shape)


_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MARK = object()  # a MARK on the simulated stack
_UNRESOLVED = "<an import whose name is not a plain string>"  # a STACK_GLOBAL this scan cannot name


def _pop_stack(stack: list, before: list) -> None:
    """Pop what an opcode consumes (``before``, from pickletools): up to and including its MARK when it
    takes a stack slice, then the fixed items below that mark. ValueError when the pickle is inconsistent."""
    fixed = len(before)
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise ValueError("no MARK on the stack")
        stack.pop()
        fixed = before.index(pickletools.markobject)
    if len(stack) < fixed:
        raise ValueError("stack underflow")
    del stack[len(stack) - fixed:]


def _scan_pickle(stream: io.BytesIO, found: list[str]) -> None:
    """Append to ``found`` the ``module.name`` each GLOBAL / STACK_GLOBAL / INST of one pickle imports.

    The stack is simulated from pickletools' opcode table, holding the strings pushed (None for any other
    value) and the memo, so STACK_GLOBAL resolves names fetched with GET as well as literal ones. Nothing
    is unpickled; a damaged pickle raises (ValueError, or pickletools' own errors)."""
    stack: list = []
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in _PUT_OPS:
            if not stack:
                raise ValueError("memoizing an empty stack")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, qualname = stack[-2:] if len(stack) >= 2 else (None, None)
            ok = isinstance(module, str) and isinstance(qualname, str)
            found.append(f"{module}.{qualname}" if ok else _UNRESOLVED)
        _pop_stack(stack, op.stack_before)
        if name in _STRING_OPS:
            stack.append(arg)
        elif name in _GET_OPS:
            stack.append(memo.get(arg))
        else:
            stack.extend(_MARK if s is pickletools.markobject else None for s in op.stack_after)


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every class or function the pickle(s) in ``data`` would import; nothing runs."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            _scan_pickle(stream, found)
        except Exception:  # noqa: BLE001 - damaged or not a pickle (legacy-format tensor bytes): stop there
            break
    return list(dict.fromkeys(found))


# what torch.save itself writes: tensors, storages and plain containers (weights_only allows these)
_BENIGN = ("torch._utils.", "torch.storage.", "collections.OrderedDict", "torch.FloatStorage",
           "torch.HalfStorage", "torch.LongStorage", "torch.DoubleStorage", "torch.BFloat16Storage",
           "torch.IntStorage", "torch.ByteStorage", "torch.BoolStorage", "torch.float", "torch.half",
           "torch.bfloat16", "torch.int64", "torch.long", "builtins.set", "__builtin__.set", "torch.device",
           "torch.Size", "_codecs.encode")
# numpy scalars and arrays are not in that list: torch.load(weights_only=True) refuses them, so a file with
# numpy values beside its weights needs the "keep only the weights" conversion below

# functions a checkpoint has no reason to call; a file that imports them gets no conversion advice
_DANGEROUS = ("os.", "posix.", "nt.", "subprocess.", "sys.", "shutil.", "socket.", "runpy.", "importlib.",
              "pty.", "webbrowser.", "code.", "ctypes.", "pickle.", "marshal.", "types.", "functools.")
_DANGEROUS_BUILTINS = {f"{m}.{n}" for m in ("builtins", "__builtin__")
                       for n in ("eval", "exec", "compile", "getattr", "setattr", "__import__", "open", "apply",
                                 "globals", "breakpoint", "input")}


def _py_str(value: object) -> str:
    """A double-quoted Python string literal of ``str(value)`` (a JSON string is one), whatever it holds."""
    return json.dumps(str(value), ensure_ascii=False)


def _convert_cmd(expr: str, path: Path) -> str:
    """A shell command that runs ``expr`` (Python that sets ``sd``) and saves ``sd`` beside ``path``. Paths
    are Python literals (``_py_str``) in one shell-quoted argument, so quotes, spaces and ``$`` are safe."""
    out = path.with_name(path.stem + ".state_dict.pth")
    return f"python -c {shlex.quote(f'import torch; {expr}; torch.save(sd, {_py_str(out)})')}"


def diagnose_zip(path: Path) -> str | None:
    """What a zip file is when it is not a torch.save checkpoint (TorchScript, another zip); None otherwise.
    Checked before ``torch.load``, which would hand a TorchScript archive to ``torch.jit.load``."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None
    if any(n.endswith("constants.pkl") or "/code/__torch__" in n for n in names):
        cmd = _convert_cmd(f'sd = torch.jit.load({_py_str(path)}, map_location="cpu").state_dict()', path)
        return (f"{path} is a TorchScript archive (torch.jit.save), not a state dict; qfair reads weights only "
                f"and does not load TorchScript programs. Extract the weights once (where you trust the file), "
                f"then pass the new file: {cmd}")
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
        return (f"{path} is a zip archive but not a PyTorch checkpoint (it has no data.pkl; it holds: "
                f"{shown or 'nothing'}). Pass the .pt/.pth file written by torch.save.")
    return None


def diagnose(path: Path) -> str | None:
    """Why a torch file that ``torch.load(weights_only=True)`` refused cannot be read, and how to convert
    it; None when this cannot tell (the caller keeps the generic message)."""
    if (msg := diagnose_zip(path)) is not None:
        return msg
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                data = z.read(pkl) if pkl else b""
        except (zipfile.BadZipFile, OSError, EOFError):
            return None
    else:
        with open(path, "rb") as f:
            data = f.read(64 * 2**20)  # the legacy format's pickles come before the tensor bytes
    classes = [g for g in _pickle_globals(data) if not g.startswith(_BENIGN)]
    if not classes:
        return None
    shown = ", ".join(classes[:4]) + (f", ... ({len(classes)} in all)" if len(classes) > 4 else "")
    head = (f"{path} holds pickled Python objects ({shown}), not only tensors; qfair never unpickles objects "
            "from a file (a pickle can run code), so it was refused.")
    danger = [g for g in classes if g.startswith(_DANGEROUS) or g in _DANGEROUS_BUILTINS or g == _UNRESOLVED]
    if danger:  # never advise loading this one unsafely
        return (f"{head} Loading it would call {', '.join(danger[:3])}: it may be malicious. Do not load it with "
                "weights_only=False; get the weights from a source you trust.")
    if any(g.startswith("torch.nn.modules.") for g in classes):  # torch.save(model): a whole nn.Module
        expr = (f'm = torch.load({_py_str(path)}, map_location="cpu", weights_only=False); '
                'sd = (m if hasattr(m, "state_dict") else m["model"]).state_dict()')
        return (f"{head} It holds a whole pickled model (torch.save(model), class {classes[0]}). Convert it "
                f"once to a state dict, where that class is importable and you trust the file: "
                f"{_convert_cmd(expr, path)}")
    expr = (f'ck = torch.load({_py_str(path)}, map_location="cpu", weights_only=False); '
            'sd = ck.state_dict() if hasattr(ck, "state_dict") else ck["state_dict"]')
    return (f"{head} Keep only the weights, once, where you trust the file (use the key that holds them if it "
            f"is not 'state_dict'): {_convert_cmd(expr, path)}")
