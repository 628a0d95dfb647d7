"""Resolve what the user asked to evaluate (a run folder, a checkpoint, an ONNX file, a module or a
backend) into an embedding backend plus the metadata the report tables need (bits, calibration)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..export.provenance import check_export_source
from ..utils.errors import CheckpointError
from .backends import Backend, make_backend


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # a broken config.yaml only loses table metadata
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and d.get(k) not in (None, ""):
            return d[k]
    return None


def table_meta(quant: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``bits`` ("FP32", "W8A8", ...), ``calibration`` and ``recipe`` from quantization metadata
    (``model.qfair_quant`` or quant.json) and a run's config.yaml (its ``config`` section)."""
    cfg = (config or {}).get("config", config or {})
    cfg = cfg if isinstance(cfg, dict) else {}
    sources = [quant, quant.get("config", {}) if isinstance(quant.get("config"), dict) else {}, cfg,
               cfg.get("quant", {}) if isinstance(cfg.get("quant"), dict) else {}]
    quantized = bool(quant) or any(_first(s, "wbits", "abits") is not None for s in sources[2:])
    w = next((v for s in sources if (v := _first(s, "wbits", "weight_bits", "bits")) is not None), None)
    a = next((v for s in sources if (v := _first(s, "abits", "act_bits", "bits")) is not None), None)
    calib = next((v for s in sources if (v := _first(s, "calib", "calibration", "calib_source"))
                  is not None), None)
    if isinstance(calib, dict):
        calib = _first(calib, "source", "kind", "name")
    recipe = next((v for s in sources if (v := _first(s, "recipe")) is not None), None)
    if not quantized:
        return {"quantized": False, "bits": "FP32", "calibration": "-", "recipe": "-"}
    bits = (f"W{w}A{a}" if a is not None else f"W{w}") if w is not None else "quantized"
    return {"quantized": quantized, "bits": bits, "calibration": str(calib).split(":")[0] if calib else "-",
            "recipe": recipe or "-"}


def _export_quant(graph: Path) -> dict[str, Any]:
    """Quantization metadata of a graph written by ``qfair export`` (from its ``.export.json`` report), so an
    int8 graph evaluated on its own is labelled with its bits, not as FP32; {} for a float or foreign graph."""
    from ..export.provenance import export_report_path

    report = export_report_path(graph)
    doc = _read_json(report)
    if not doc:  # no report (a copied or foreign graph): look at the graph itself
        ops = _quant_ops(graph)
        if ops:
            return {"graph_ops": ops,
                    "note": f"{graph.name} has no export report ({report.name}) but contains quantization ops "
                            f"({', '.join(ops)}): labelled 'quantized', bits and calibration unknown. Keep "
                            f"the report beside the graph, or evaluate the run folder it was exported from"}
        return {}
    if not doc.get("quantized") or doc.get("bits") is None:
        return {}
    return {"wbits": doc.get("wbits") or doc["bits"], "abits": doc.get("abits") or doc["bits"],
            "recipe": doc.get("recipe")}


def _quant_op_types() -> tuple[str, ...]:
    """Q/DQ (what qfair exports) plus the integer ops other quantizers write."""
    from ..export.graph import QDQ_OPS

    return (*QDQ_OPS, "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def _quant_ops(graph: Path) -> list[str]:
    """Quantization op types used in an ONNX graph (its subgraphs not searched); [] for a float graph or
    when the ``onnx`` package is missing."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception:  # unreadable here; ONNX Runtime reports a broken file itself
        return []
    ops = _quant_op_types()
    return sorted({n.op_type for n in model.graph.node if n.op_type in ops})


def load_target(target: Any, arch: str | None = None, backend: str | None = None,
                name: str | None = None) -> tuple[Backend, str, dict[str, Any]]:
    """``(backend, display name, meta)`` for a run folder, checkpoint, .onnx file, module or backend.

    A run folder of ``qfair quantize`` holds model.pt + quant.json (loaded with
    ``qfair.quant.load_quantized``); a folder with model.onnx runs on ONNX Runtime; a float checkpoint
    file (or a folder with model.pt and no quant.json) is loaded with ``qfair.models.load_model``.
    """
    if not isinstance(target, (str, Path)):
        be = make_backend(target, backend)
        meta = be.meta()
        meta.update(table_meta(meta.get("quant", {}) or {}))
        return be, name or getattr(be, "label", None) or meta.get("arch", be.name), meta
    path = Path(target)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}. Pass a run folder, a checkpoint file, a .qpk or an .onnx "
                              "file.")
    config = _read_yaml(path / "config.yaml") if path.is_dir() else {}
    display = name or (path.name if path.is_dir() else path.stem)
    if path.is_dir():
        onnx_file, pt, qjson = path / "model.onnx", path / "model.pt", path / "quant.json"
        want_ort = backend in ("onnxruntime", "ort", "onnx") or (backend is None and onnx_file.is_file()
                                                                and not pt.is_file())
        quant = _read_json(qjson)
        if want_ort:
            if not onnx_file.is_file():
                raise CheckpointError(f"{path}: no model.onnx for the ONNX Runtime backend; "
                                      f"export it first with `qfair export {path} --target onnxruntime`")
            check_export_source(onnx_file)  # a re-quantized run leaves a stale model.onnx behind
            be = make_backend(onnx_file, "onnxruntime")
            quant = quant or _export_quant(onnx_file)  # no quant.json: the export report, else the graph
        elif backend not in (None, "torch", "pytorch"):
            be = make_backend(path, backend)
        elif qjson.is_file():
            from ..quant import load_quantized

            be = make_backend(load_quantized(path), "torch")
        elif pt.is_file():
            from ..models import load_model

            be = make_backend(load_model(pt, arch), "torch")
        else:
            raise CheckpointError(f"{path}: not a model folder (expected model.pt [+ quant.json] or model.onnx; "
                                  f"found {sorted(p.name for p in path.iterdir())[:10]})")
    else:
        quant = {}
        if (backend is None and path.suffix.lower() == ".onnx") or backend in ("onnxruntime", "ort", "onnx"):
            check_export_source(path)
            be = make_backend(path, "onnxruntime")
            quant = _export_quant(path)
        elif backend not in (None, "torch", "pytorch"):
            be = make_backend(path, backend)
        else:
            from ..models import load_model

            be = make_backend(load_model(path, arch), "torch")
    meta = be.meta()
    note = quant.pop("note", None) if isinstance(quant, dict) else None
    meta.update(table_meta({**quant, **(meta.get("quant") or {})}, config))
    meta["source"] = str(path)
    if note:
        meta["target_note"] = note
    return be, display, meta
