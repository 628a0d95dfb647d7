"""``export_onnx``: quantized run (or model) -> validated, parity-checked ONNX graph for a runtime.

Steps: load the model, let the target refuse what it cannot run exactly, freeze the quantizers,
export with the dynamo exporter (fake-quant -> Q/DQ), rewrite for the target, validate against the
target's rules, compare with the torch model on real and stress images, then write the graph and a
JSON report atomically. Nothing is written when any step fails.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.errors import ExportError, QfairError
from ..utils.io import atomic_path, atomic_write_json

DEFAULT_PARITY = "builtin:tiny"


def load_for_export(source: nn.Module | str | Path) -> tuple[nn.Module, Path | None]:
    """(model, run folder or None) from a model, a quantized run folder, a float run folder or a checkpoint."""
    if isinstance(source, nn.Module):
        return source, None
    path = Path(source)
    if path.is_dir() and (path / "quant.json").exists():
        from ..quant import load_quantized

        return load_quantized(path), path
    from ..models import load_model

    if path.is_dir():
        for name in ("model.pt", "model.pth", "backbone.pth"):
            if (path / name).exists():
                return load_model(path / name), path
        raise QfairError(f"{path} holds no quant.json and no model.pt: not a qfair run folder")
    if path.is_file():
        return load_model(path), None
    raise QfairError(f"{path} not found: pass a run folder written by 'qfair quantize' or a checkpoint")


def model_bits(model: nn.Module) -> int | None:
    """Smallest bit width among the active quantizers; None for a float model."""
    try:
        from ..quant import iter_quantizers
    except ImportError:  # pragma: no cover
        return None
    bits = [q.bits for _, q in iter_quantizers(model) if q.fake_quant_enabled]
    return min(bits) if bits else None


def parity_inputs(parity_data: Any, n: int = 64) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None, str]:
    """(images (N, 3, 112, 112) float, pairs into them or None, issame or None, description)."""
    from ..data import open_benchmark, to_model_input

    if parity_data is None:
        parity_data = DEFAULT_PARITY
    if isinstance(parity_data, torch.Tensor):
        x = parity_data if parity_data.is_floating_point() else to_model_input(parity_data)
        return x[:n].float(), None, None, f"{min(n, len(x))} given images"
    vset = open_benchmark(parity_data) if isinstance(parity_data, (str, Path)) else parity_data
    pairs, issame = np.asarray(vset.pairs), np.asarray(vset.issame)
    keep = max(1, min(len(pairs), n // 2))  # each pair brings at most two images
    pairs, issame = pairs[:keep], issame[:keep]
    used, inverse = np.unique(pairs.reshape(-1), return_inverse=True)
    images = to_model_input(vset.images.get_many(used))
    return images.float(), inverse.reshape(-1, 2), issame, f"{len(used)} images, {keep} pairs of {vset.name}"


def _check_out(out: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        raise QfairError(f"cannot write {out}: folder {parent} does not exist. Create it or pick another --out.")
    if not os.access(parent, os.W_OK):
        raise QfairError(f"cannot write {out}: folder {parent} is not writable. Pick another --out.")


def export_onnx(run_dir_or_model: nn.Module | str | Path, target: str = "tensorrt", out: str | Path | None = None,
                parity_data: Any = None, *, parity_set: Any = None, n_parity: int = 64, opset: int = 18,
                keep_float: str = "auto", cosine_gate: float | None = None) -> Path:
    """Export a quantized run for ``target`` ("tensorrt" or "onnxruntime"); returns the .onnx path.

    ``parity_data``: None (the built-in benchmark), a benchmark spec ("lfw:/x/lfw.bin"), a
    VerificationSet (its pairs gate the accuracy) or a float / uint8 image tensor (N, 3, 112, 112).
    Writes ``out`` (default ``RUN_DIR/model.onnx``) and ``<out stem>.export.json`` beside it.
    Raises ExportError when the target cannot run the model exactly, the graph breaks the target's
    rules, or parity fails (cosine gate 0.999 at 8 bits, 0.995 at 6; accuracy gate 0.1 pp).
    """
    import onnx

    from .onnx_graph import freeze_copy, torch_to_onnx
    from .parity import parity_check
    from .targets import TARGETS, ExportContext
    from .validate import check_onnx

    spec = TARGETS.get(target)  # unknown target: clear error before any work
    model, run_dir = load_for_export(run_dir_or_model)
    if out is None:
        if run_dir is None:
            raise QfairError("export_onnx needs out=PATH when given a model object or a checkpoint file")
        out = run_dir / "model.onnx"
    out = Path(out)
    _check_out(out)
    bits = model_bits(model)
    images, pairs, issame, described = parity_inputs(parity_set if parity_data is None else parity_data, n_parity)
    frozen = freeze_copy(model)
    ctx = ExportContext(frozen, bits is not None, bits, images, keep_float=keep_float)
    if bits is None:
        ctx.notes.append("the model is not quantized: exported as float32 (no Q/DQ); quantize it first for int8")
    else:
        spec.check(ctx)
    proto = torch_to_onnx(frozen, opset)
    layout = spec.build(proto, ctx)
    if bits is not None:
        check_onnx(proto, spec.rules)
    reference, evaluated = frozen, None
    if layout.get("output_quant"):  # the layout re-quantizes conv outputs: gate the export on its torch twin
        from .parity import simulate_output_quant

        reference, evaluated = simulate_output_quant(frozen, layout["output_quant"]), frozen
        ctx.notes.append(f"ONNX Runtime layout: {len(layout['output_quant'])} conv outputs re-quantized to uint8 "
                         "for integer fusion; parity is checked against the torch model with the same "
                         "quantizers, and against the evaluated model (accuracy gate, cosine reported)")
    parity = parity_check(reference, proto, images, bits=bits, pairs=pairs, issame=issame, threshold=cosine_gate,
                          evaluated=evaluated)
    if not parity.passed:
        where = ""
        if parity.first_divergence:
            d = parity.first_divergence
            where = f" Outputs start to diverge at layer '{d['layer']}' (cosine {d['cosine']:.5f})."
        raise ExportError(f"parity check failed for target {spec.name}: {'; '.join(parity.reasons)}.{where} "
                          f"Nothing was written. ({parity.summary()})")
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
    meta = getattr(model, "qfair_quant", None) or {}
    report = {"target": spec.name, "onnx": str(out), "bytes": out.stat().st_size, "opset": opset,
              "ir_version": proto.ir_version, "bits": bits, "recipe": meta.get("recipe"),
              "quantized": bits is not None, "notes": ctx.notes, "parity_data": described,
              "parity": parity.to_dict(), **layout}
    atomic_write_json(out.with_name(out.stem + ".export.json"), report)
    return out
