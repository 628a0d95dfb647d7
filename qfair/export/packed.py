"""Packed low-bit checkpoints: quantized weights stored at their bit width (2..8 bits, eight codes in
``bits`` bytes; at 6 bits four codes in three bytes) with their per-channel scales and zero points,
every other tensor (BatchNorm, PReLU, quantizer buffers) stored raw and exact.

File layout (no pickle, nothing that can run code)::

    b"QFAIRPK1" | uint64 little-endian header length | JSON header | padding to 64 | blobs

The header lists every tensor: name, dtype, shape, byte offset and length, and for packed weights the
bits, axis, integer range and the names of their scale / zero-point tensors. Loading dequantizes the
codes with ``(q - zp) * s``, which is bit for bit the fake-quantized weight the model evaluated.

``export_packed`` also records the run's quant.json (architecture, QuantConfig, quantizer modes; meta
``quant_json``), so :func:`load_packed_model` rebuilds the quantized model from the file alone: what
``qfair evaluate`` / ``qfair info`` / ``qfair.load_model`` do with a ``.qpk``.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..utils.errors import CheckpointError, ExportError
from ..utils.io import atomic_path

MAGIC = b"QFAIRPK1"
ALIGN = 64
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64", torch.int64: "int64",
           torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}
_NP = {v: np.dtype(v) for v in _DTYPES.values()}


@dataclass(frozen=True)
class WeightSpec:
    """How one weight was quantized: codes = clamp(round(w / s) + zp, qmin, qmax) along ``axis``."""

    bits: int
    scale: Tensor  # 0-d or (C,)
    zero_point: Tensor  # same shape, integers stored as float
    qmin: int
    qmax: int
    axis: int | None


def weight_specs_from_model(model: torch.nn.Module) -> dict[str, WeightSpec]:
    """State-dict name of each quantized weight -> its spec (from the model's active weight quantizers)."""
    from ..quant import iter_quantizers
    from ..quant.math import reduce_minmax

    specs = {}
    params = dict(model.named_parameters())
    for name, q in iter_quantizers(model):
        if getattr(q, "role", "") != "weight" or not q.fake_quant_enabled:
            continue  # a switched-off weight quantizer: the model computes with the float weight, stored raw
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        key = f"{owner}.weight" if owner else "weight"
        if getattr(q, "dynamic", False) and key in params:  # the range a forward would set right now
            q.set_range(*reduce_minmax(params[key].detach(), q.axis))
        specs[key] = WeightSpec(q.bits, q.scale.detach().clone(), q.zero_point.detach().clone(), q.qmin, q.qmax,
                                q.axis)
    return specs


def _codes(w: Tensor, spec: WeightSpec) -> Tensor:
    shape = [1] * w.dim()
    axis = spec.axis if spec.axis is not None and spec.axis >= 0 else None
    if axis is not None:
        shape[axis] = -1
    s = spec.scale.float().reshape(shape) if axis is not None else spec.scale.float()
    z = spec.zero_point.float().reshape(shape) if axis is not None else spec.zero_point.float()
    return torch.clamp(torch.round(w.float() / s) + z, spec.qmin, spec.qmax)


def _dequant(codes: Tensor, spec: WeightSpec, shape: list[int]) -> Tensor:
    view = [1] * len(shape)
    axis = spec.axis if spec.axis is not None and spec.axis >= 0 else None
    if axis is not None:
        view[axis] = -1
    s = spec.scale.float().reshape(view) if axis is not None else spec.scale.float()
    z = spec.zero_point.float().reshape(view) if axis is not None else spec.zero_point.float()
    q = codes.reshape(shape).float() + spec.qmin
    return (q - z) * s  # same float ops as qfair::fake_quant's (clamp(...) - z) * s


def pack_state_dict(state: dict[str, Tensor], specs: dict[str, WeightSpec], meta: dict[str, Any] | None = None,
                    *, float_dtype: str = "float32") -> bytes:
    """Serialise ``state`` with the weights named in ``specs`` packed at their bit width.

    Exact by default. Float tensors holding only integers in int16 range (zero points) are stored as
    int16, identical small tensors once (a quantizer's scale and the packed weight's scale).
    ``float_dtype="float16"`` stores the remaining float tensors (BatchNorm, PReLU) in half
    precision: smaller, and no longer exact for them (the packed weights stay exact).
    """
    from kernels import pack_bits

    if float_dtype not in ("float32", "float16"):
        raise ExportError(f"float_dtype must be float32 or float16, got {float_dtype!r}")
    entries, blobs, offset = [], [], 0
    seen: dict[tuple[str, tuple[int, ...], bytes], dict[str, Any]] = {}

    def add_blob(data: bytes) -> tuple[int, int]:
        nonlocal offset
        pad = (-offset) % 8
        blobs.append(b"\0" * pad + data)
        start = offset + pad
        offset = start + len(data)
        return start, len(data)

    def add_raw(name: str, t: Tensor, lossy_ok: bool = False) -> dict[str, Any]:
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise ExportError(f"cannot store tensor '{name}' of dtype {t.dtype} in a packed checkpoint")
        stored = _DTYPES[t.dtype]
        if t.dtype == torch.float32 and t.numel() and bool(torch.all(t == torch.round(t))) and \
                bool(t.abs().max() < 2 ** 15):
            stored = "int16"  # integer-valued floats (zero points): exact in int16
        elif t.dtype == torch.float32 and lossy_ok and float_dtype == "float16":
            stored = "float16"
        arr = t.numpy().astype(_NP[stored].newbyteorder("<"))
        data = arr.tobytes()
        key = (stored, tuple(t.shape), data) if len(data) <= 65536 else None
        entry = {"name": name, "kind": "raw", "dtype": _DTYPES[t.dtype], "stored": stored, "shape": list(t.shape)}
        if key is not None and key in seen:  # identical small tensor: point at the same bytes
            return {**entry, "offset": seen[key]["offset"], "nbytes": seen[key]["nbytes"]}
        off, n = add_blob(data)
        entry.update(offset=off, nbytes=n)
        if key is not None:
            seen[key] = entry
        return entry

    for name, t in state.items():
        spec = specs.get(name)
        if spec is None:
            entries.append(add_raw(name, t, lossy_ok=not name.endswith(("scale", "zero_point"))))
            continue
        if not 2 <= spec.bits <= 8 or spec.qmax - spec.qmin >= 2 ** spec.bits:
            raise ExportError(f"weight '{name}': range [{spec.qmin}, {spec.qmax}] does not fit {spec.bits} bits")
        codes = (_codes(t.detach().cpu(), spec) - spec.qmin).to(torch.uint8).reshape(-1)
        off, n = add_blob(pack_bits(codes, spec.bits).numpy().tobytes())
        entry = {"name": name, "kind": "packed", "dtype": _DTYPES.get(t.dtype, "float32"), "shape": list(t.shape),
                 "offset": off, "nbytes": n, "bits": spec.bits, "qmin": spec.qmin, "qmax": spec.qmax,
                 "axis": spec.axis, "count": int(t.numel())}
        entry["scale"] = add_raw(f"{name}::scale", spec.scale.float())
        entry["zero_point"] = add_raw(f"{name}::zero_point", spec.zero_point.float())
        entries.append(entry)
    header = json.dumps({"format": "qfair-packed", "version": 1, "meta": meta or {}, "tensors": entries}).encode()
    head = MAGIC + struct.pack("<Q", len(header)) + header
    head += b"\0" * ((-len(head)) % ALIGN)
    return head + b"".join(blobs)


def save_packed(model_or_state: torch.nn.Module | dict[str, Tensor], path: str | Path, *,
                specs: dict[str, WeightSpec] | None = None, meta: dict[str, Any] | None = None,
                float_dtype: str = "float32") -> Path:
    """Write a packed checkpoint atomically. For a model, the specs come from its weight quantizers."""
    if isinstance(model_or_state, torch.nn.Module):
        model = model_or_state
        specs = weight_specs_from_model(model) if specs is None else specs
        state = model.state_dict()
        meta = {**(meta or {}), "qfair_quant": getattr(model, "qfair_quant", None)}
    else:
        state, specs = model_or_state, specs or {}
    data = pack_state_dict(state, specs, meta, float_dtype=float_dtype)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _read_raw(buf: memoryview, base: int, e: dict[str, Any], where: str) -> Tensor:
    dtype, stored = _NP.get(e.get("dtype")), _NP.get(e.get("stored", e.get("dtype")))
    if dtype is None or stored is None:
        raise CheckpointError(f"{where}: tensor '{e.get('name')}' has unsupported dtype {e.get('dtype')!r}")
    start, n = base + int(e["offset"]), int(e["nbytes"])
    if start < base or start + n > len(buf) or n != int(np.prod(e["shape"], dtype=np.int64)) * stored.itemsize:
        raise CheckpointError(f"{where}: tensor '{e['name']}' points outside the file or has the wrong size "
                              "(truncated or corrupt file)")
    arr = np.frombuffer(buf[start:start + n], dtype=stored.newbyteorder("<")).reshape(e["shape"])
    return torch.from_numpy(arr.astype(dtype, copy=True))


def load_packed(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict with dequantized weights, meta). Never unpickles; checks every offset."""
    from kernels import unpack_bits

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"packed checkpoint not found: {path}")
    data = path.read_bytes()
    if data[:8] != MAGIC or len(data) < 16:
        raise CheckpointError(f"{path}: not a qfair packed checkpoint (bad magic bytes)")
    (hlen,) = struct.unpack("<Q", data[8:16])
    if 16 + hlen > len(data):
        raise CheckpointError(f"{path}: header length {hlen} exceeds the file size (truncated file)")
    try:
        header = json.loads(data[16:16 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt header ({exc})") from None
    if header.get("format") != "qfair-packed" or header.get("version") != 1:
        raise CheckpointError(f"{path}: unsupported packed format {header.get('format')} v{header.get('version')}")
    base = 16 + hlen + ((-(16 + hlen)) % ALIGN)
    buf = memoryview(data)
    state: dict[str, Tensor] = {}
    for e in header["tensors"]:
        if e["kind"] == "raw":
            state[e["name"]] = _read_raw(buf, base, e, str(path))
            continue
        bits, count = int(e["bits"]), int(e["count"])
        start, n = base + int(e["offset"]), int(e["nbytes"])
        if (not 2 <= bits <= 8 or start < base or start + n > len(data) or n != -(-count // 8) * bits
                or count != math.prod(int(d) for d in e["shape"])):
            raise CheckpointError(f"{path}: packed tensor '{e['name']}' is corrupt or truncated")
        codes = unpack_bits(torch.frombuffer(bytearray(buf[start:start + n]), dtype=torch.uint8), bits, count)
        spec = WeightSpec(bits, _read_raw(buf, base, e["scale"], str(path)),
                          _read_raw(buf, base, e["zero_point"], str(path)), int(e["qmin"]), int(e["qmax"]), e["axis"])
        state[e["name"]] = _dequant(codes, spec, e["shape"]).to(getattr(torch, e["dtype"]))
    return state, header.get("meta", {})


def load_packed_into(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a packed checkpoint into a prepared quantized model; weight quantizers become static so
    they keep the stored scales (re-deriving a range from already-rounded weights could differ)."""
    state, _ = load_packed(path)
    model.load_state_dict(state)
    _static_weights(model)
    return model


def _static_weights(model: torch.nn.Module) -> None:
    from ..quant import iter_quantizers

    for _, q in iter_quantizers(model):
        if getattr(q, "role", "") == "weight" and hasattr(q, "make_static"):
            q.make_static()


REBUILD_KEY = "quant_json"  # meta: the run's quant.json, less the scales the tensors hold


def is_packed_file(path: str | Path) -> bool:
    """Whether ``path`` is named ``*.qpk`` or starts with the packed checkpoint's magic bytes."""
    from .provenance import PACKED_SUFFIX

    if Path(path).suffix.lower() == PACKED_SUFFIX:
        return not Path(path).is_dir()
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def rebuild_record(model: torch.nn.Module, run_dir: Path | None) -> dict[str, Any] | None:
    """What :func:`load_packed_model` rebuilds the model from: the run's quant.json (architecture,
    QuantConfig, quantizer modes) without per-quantizer scales; None when ``model`` carries no quant metadata."""
    import tempfile

    from ..quant.serialize import read_quant_json, save_quantized

    if run_dir is not None and (Path(run_dir) / "quant.json").is_file():
        doc = read_quant_json(run_dir)
    elif getattr(model, "qfair_quant", None) is None:
        return None
    else:  # a model object: the quant.json save_quantized would write for it
        with tempfile.TemporaryDirectory(prefix="qfair-qpk-") as tmp:
            doc = read_quant_json(save_quantized(model, tmp))
    slim = [{k: v for k, v in q.items() if k not in ("scale", "zero_point", "observer_options")}
            for q in doc["quantizers"]]
    return {**doc, "quantizers": slim}


def _recorded_doc(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The quant.json recorded in the file, else (files from before it was recorded) the one of the run
    folder it lies in or was exported from, if it describes the same quantization."""
    from ..quant.serialize import read_quant_json

    doc = meta.get(REBUILD_KEY)
    if isinstance(doc, dict):
        return doc
    source = meta.get("source")
    folders = [path.parent, *([Path(source)] if isinstance(source, str) and source else [])]
    for folder in folders:
        if (folder / "quant.json").is_file():
            doc = read_quant_json(folder)
            recorded = (meta.get("qfair_quant") or {}).get("config")
            if recorded is not None and doc.get("config") != recorded:
                raise CheckpointError(f"{path} does not record its architecture and quantizers, and "
                                      f"{folder / 'quant.json'} describes another quantization (its config differs "
                                      "from the file's): the run was quantized again after the export. Export the "
                                      "run again: qfair export RUN_DIR --format packed")
            return doc
    where = " or ".join(str(f) for f in dict.fromkeys(folders))
    raise CheckpointError(f"{path} does not record its architecture and quantizers (it was written by an older "
                          f"qfair, or by save_packed), and there is no quant.json in {where} to rebuild the model "
                          "from. Put the file back in the run folder it was exported from, or export the run again "
                          "with this qfair: qfair export RUN_DIR --format packed")


def load_packed_model(path: str | Path, model: torch.nn.Module | None = None, *,
                      arch: str | None = None) -> torch.nn.Module:
    """The quantized model a packed checkpoint holds, in eval mode, computing what the run's model.pt
    computes: rebuilt by ``qfair.quant.rebuild_quantized`` from the quant.json recorded in the file (architecture,
    QuantConfig, quantizer modes), with the file's tensors; weight ranges stay the stored ones.

    ``model`` / ``arch``: the float architecture, for a file exported from a model qfair did not build."""
    from .provenance import check_export_source

    path = Path(path)
    state, meta = load_packed(path)
    doc = _recorded_doc(path, meta)
    check_export_source(path)  # a .qpk beside a re-quantized model.pt is stale
    recorded = doc["arch"].get("name") if isinstance(doc.get("arch"), dict) else None
    if model is None and arch is not None:
        model = _float_arch(path, recorded, arch)
    if model is None and recorded is None:
        raise CheckpointError(f"{path} does not record its architecture (it was exported from a model qfair did not "
                              "build): name it with --arch NAME (arch= in Python), or in Python pass the float "
                              "model it was quantized from: load_packed_model(path, model=...)")
    qmodel = _rebuild(path, doc, state, model)
    _static_weights(qmodel)
    return qmodel


def _float_arch(path: Path, recorded: str | None, arch: str) -> torch.nn.Module | None:
    """The float model to rebuild on for ``--arch``: None when the file records that architecture itself."""
    from ..models.registry import MODELS, create_model

    if recorded is None:
        return create_model(arch)
    if MODELS.canonical(arch) != MODELS.canonical(recorded):
        raise CheckpointError(f"{path} holds a quantized {recorded}, not {arch}: drop --arch (the file records its "
                              "architecture)")
    return None


def _rebuild(path: Path, doc: dict[str, Any], state: dict[str, Tensor],
             model: torch.nn.Module | None) -> torch.nn.Module:
    """``qfair.quant.serialize.rebuild_quantized`` on the file's quant.json and tensors; its errors name ``path``."""
    from ..quant.serialize import rebuild_quantized

    try:
        return rebuild_quantized(doc, state, model, source="its quant.json", weights="its state dict")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the quantized model it holds: {exc}. Export the run again: "
                              "qfair export RUN_DIR --format packed") from None


def export_packed(source: torch.nn.Module | str | Path, out: str | Path | None = None, *,
                  float_dtype: str = "float32") -> Path:
    """Write a quantized run (or model) as a packed checkpoint plus its ``<name>.export.json`` report.

    ``out`` defaults to ``RUN_DIR/model.qpk``. The file is read back before it replaces anything: every
    packed weight must equal the fake-quantized weight the model computes with and every other tensor
    the model's own (float16 storage: within half precision), else ExportError and nothing is written.
    The report records the bits, the recipe and the SHA-256 of the run's model.pt, as the ONNX export's does;
    the file records the run's quant.json, for :func:`load_packed_model`.
    """
    from ..utils.io import output_file
    from .api import load_for_export, model_bits
    from .onnx_graph import freeze_copy
    from .provenance import export_report_path, source_record, write_with_report

    model, run_dir = load_for_export(source)
    if out is None:
        if run_dir is None:
            raise ExportError("a packed export of a model object or a checkpoint file needs an output path "
                              "(out=PATH, --out FILE.qpk)")
        out = run_dir / "model.qpk"
    out = Path(out)
    output_file(out)
    output_file(export_report_path(out))
    bits = model_bits(model)
    if bits is None:
        where = f"{source} is" if isinstance(source, (str, Path)) else "the model is"
        raise ExportError(f"{where} not quantized (no active quantizer): the packed format stores quantized "
                          "weights at their bit width, so it would only copy the float weights. Quantize it first "
                          "(qfair quantize), or export the float model with --format onnx")
    frozen = freeze_copy(model)  # the weight ranges the model computes with, fixed
    specs = weight_specs_from_model(frozen)
    state = frozen.state_dict()
    meta = getattr(model, "qfair_quant", None) or {}
    record = {"source": str(run_dir or out), "qfair_quant": meta, REBUILD_KEY: rebuild_record(model, run_dir)}
    data = pack_state_dict(state, specs, record, float_dtype=float_dtype)
    worst = _verify_packed(data, frozen, state, specs, float_dtype)

    def report(nbytes: int) -> dict[str, Any]:
        return {"format": "packed", "target": None, "file": str(out), "bytes": nbytes, "bits": bits,
                "recipe": meta.get("recipe"), "wbits": meta.get("wbits"), "abits": meta.get("abits"),
                "quantized": True, "float_dtype": float_dtype, "packed_weights": len(specs),
                "weight_bits": sorted({s.bits for s in specs.values()}),
                "exact": float_dtype == "float32", "max_abs_diff": worst,
                "notes": [] if float_dtype == "float32" else
                ["float16 storage: BatchNorm / PReLU tensors are rounded to half precision (not exact)"],
                **source_record(run_dir, out)}

    return write_with_report(out, lambda tmp: tmp.write_bytes(data), report)


def _verify_packed(data: bytes, model: torch.nn.Module, state: dict[str, Tensor], specs: dict[str, WeightSpec],
                   float_dtype: str) -> float:
    """Read the packed bytes back and compare every tensor with what ``model`` computes with; returns the
    largest absolute difference (0.0 when exact). Raises ExportError naming the first tensor that differs."""
    import tempfile

    from ..quant import iter_quantizers

    expected = dict(state)
    with torch.no_grad():
        for name, q in iter_quantizers(model):
            key = f"{name.rsplit('.', 1)[0]}.weight" if "." in name else "weight"
            if getattr(q, "role", "") == "weight" and key in specs:
                expected[key] = q(state[key].float())  # the fake-quantized weight of the forward pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.qpk"
        path.write_bytes(data)
        loaded, _ = load_packed(path)
    worst = 0.0
    for name, want in expected.items():
        got = loaded.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            raise ExportError(f"packed export: tensor '{name}' did not survive the round trip; nothing was written")
        if not want.is_floating_point():
            ok = torch.equal(got, want)
            diff = 0.0 if ok else float("inf")
        else:
            diff = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
            lossy = float_dtype == "float16" and name not in specs
            ok = diff <= (float(want.abs().max()) * 2 ** -10 + 6e-8 if lossy else 0.0)
        if not ok:
            raise ExportError(f"packed export: tensor '{name}' reads back with a difference of {diff:.3g} from the "
                              "model's (fake-quantized) value; nothing was written. This is a qfair bug: please "
                              "report it")
        worst = max(worst, diff)
    return worst
