"""``export_onnx``: quantized run (or model) -> validated, parity-checked ONNX graph for a runtime.

Steps: load the model, let the target refuse what it cannot run exactly, freeze the quantizers,
export with the dynamo exporter (fake-quant -> Q/DQ), rewrite for the target, validate against the
target's rules, compare with the torch model on real and stress images, check the file to be written
(onnx.checker; a compacted graph must compute what the checked one did), then write the graph and its
JSON report as one step (provenance.write_with_report). Nothing is written when any step fails.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..utils.errors import ExportError, QfairError
from ..utils.io import output_file
from .provenance import export_report_path, write_with_report

DEFAULT_PARITY = "builtin:tiny"
KEEP_FLOAT = ("auto", "none", "depthwise", "all")
OPSETS = (17, 21)  # as ExportConfig.opset


def load_for_export(source: nn.Module | str | Path) -> tuple[nn.Module, Path | None]:
    """(model, run folder or None) from a model, a quantized run folder, a float run folder or a checkpoint."""
    if isinstance(source, nn.Module):
        return source, None
    if not isinstance(source, (str, Path)):
        raise QfairError(f"export needs a quantized model (nn.Module), a run folder or a checkpoint path, got "
                         f"{type(source).__name__}")
    path = Path(source)
    if path.is_dir() and (path / "quant.json").exists():
        from ..quant import load_quantized

        return load_quantized(path), path
    from ..models import load_model

    if path.is_dir():
        for name in ("model.pt", "model.pth", "backbone.pth"):
            if (path / name).exists():
                return load_model(path / name), path
        raise QfairError(f"{path} holds no quant.json and no model.pt (nor model.pth, backbone.pth): not a run "
                         "folder; pass the folder written by `qfair quantize`, `qfair qat` or `qfair distill` (it "
                         "holds model.pt), or a checkpoint file with --out FILE.onnx")
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
        if parity_data.dim() != 4 or tuple(parity_data.shape[1:]) != (3, 112, 112) or not len(parity_data):
            raise ExportError(f"parity_data: an image tensor must be (N, 3, 112, 112) with N >= 1 (uint8, or float "
                              f"normalised to [-1, 1]), got {tuple(parity_data.shape)}")
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
    """Fail before any work when ``out`` or its ``.export.json`` report cannot be written as a file."""
    output_file(out)
    output_file(export_report_path(out))


def export_onnx(run_dir_or_model: nn.Module | str | Path, target: str = "tensorrt", out: str | Path | None = None,
                parity_data: Any = None, *, parity_set: Any = None, n_parity: int = 64, opset: int = 18,
                keep_float: str = "auto", cosine_gate: float | None = None, requant: bool = False) -> Path:
    """Export a quantized run for ``target`` ("tensorrt" or "onnxruntime"); returns the .onnx path.

    ``parity_data``: None (the built-in benchmark), a benchmark spec ("lfw:/x/lfw.bin"), a
    VerificationSet (its pairs gate the accuracy) or a float / uint8 image tensor (N, 3, 112, 112).
    Writes ``out`` (default ``RUN_DIR/model.onnx``) and ``<out stem>.export.json`` beside it.
    Raises ExportError when the target cannot run the model exactly, the graph breaks the target's
    rules, or parity fails (cosine gate 0.999 at 8 bits, 0.995 at 6; accuracy gate 0.1 pp). With
    ``keep_float="auto"`` a target with an exact fallback layout (ONNX Runtime: every layer float on int8
    weights) uses it when its fast layout fails parity, and says so in the report's notes. A layout that
    changes the math (ONNX Runtime's integer kernels re-quantize conv outputs to uint8 and round biases to
    int32) must pass the cosine gate twice: against a torch twin with the same extra quantizers (the graph
    is exact) and against the evaluated model (what was evaluated is what ships); ``requant=True`` drops
    the second cosine gate (the cosine is still reported, the accuracy gate still applies).
    """
    import onnx

    from .onnx_graph import float_dtypes, freeze_copy
    from .provenance import source_record
    from .targets import TARGETS, ExportContext

    spec = TARGETS.get(target)  # unknown target: clear error before any work
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSETS[0] <= opset <= OPSETS[1]:
        raise ExportError(f"opset {opset!r} is not supported: use {OPSETS[0]}..{OPSETS[1]} (Q/DQ per channel needs "
                          "13+; torch exports 18+ natively and qfair converts down to 17)")
    if cosine_gate is not None and (isinstance(cosine_gate, bool) or not isinstance(cosine_gate, (int, float))
                                    or not 0.0 < cosine_gate <= 1.0):
        raise ExportError(f"cosine_gate {cosine_gate!r} is not a cosine threshold: give a number in (0, 1] (default "
                          "None: 0.999 at 8 bits, 0.995 at 6); a gate of 0 or below would let any graph pass")
    if isinstance(n_parity, bool) or not isinstance(n_parity, int) or n_parity < 2:
        raise ExportError(f"n_parity {n_parity!r}: give the number of real images for the parity check, 2 or more")
    if keep_float not in KEEP_FLOAT:  # checked by the layout too, but only after the (slow) torch export
        raise ExportError(f"unknown keep_float option '{keep_float}'; use {', '.join(KEEP_FLOAT)}")
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
    if float_dtypes(model):
        ctx.notes.append(f"the model holds {', '.join(str(d).replace('torch.', '') for d in float_dtypes(model))} "
                         "tensors: exported in float32 (its weights and quantizer scales are exact in float32) and "
                         "parity-checked against its float32 copy")
    if bits is None:
        ctx.notes.append("the model is not quantized: exported as float32 (no Q/DQ); quantize it first for int8")
    else:
        spec.check(ctx)
    proto, layout, parity = _build_and_check(spec, ctx, opset, pairs, issame, cosine_gate, requant)
    if not parity.passed and spec.exact_fallback and ctx.keep_float == "auto" and layout.get("int8_layers"):
        # integer kernels change the model (int32 biases, int8 conv outputs); a chaotic 6-bit net, or a
        # verification pair on a knife edge, then fails parity: ship the exact layout instead
        first = parity
        ctx.keep_float = spec.exact_fallback
        proto, layout, parity = _build_and_check(spec, ctx, opset, pairs, issame, cosine_gate, requant)
        ctx.notes.append(f"the integer-kernel layout failed parity ({'; '.join(first.reasons)}; {first.summary()}); "
                         f"exported keep_float={spec.exact_fallback} instead: int8 weights in the file, float "
                         "kernels, the evaluated model's arithmetic up to float rounding (parity-checked below)")
        layout["integer_layout_parity"] = first.to_dict()
    if layout.get("output_quant") or layout.get("bias_shift"):
        ctx.notes.append(f"ONNX Runtime layout: {len(layout['output_quant'])} conv outputs re-quantized to uint8 "
                         f"and {len(layout.get('bias_shift') or {})} biases rounded to int32 for integer fusion; "
                         "parity is checked against the torch model with the same quantizers and biases, and "
                         "against the evaluated model (" + ("accuracy gate, cosine reported: --requant"
                                                            if requant else "cosine and accuracy gates") + ")")
    if not parity.passed:
        where = ""
        if parity.first_divergence:
            d = parity.first_divergence
            where = f" Outputs start to diverge at layer '{d['layer']}' (cosine {d['cosine']:.5f})."
        before = f" ({ctx.notes[-1]})" if "integer_layout_parity" in layout else ""
        raise ExportError(f"parity check failed for target {spec.name}: {'; '.join(parity.reasons)}.{where} "
                          f"Nothing was written. ({parity.summary()}){before}")
    if spec.compact and bits is not None:  # after parity, which finds layers by their tensors' names
        from .graph import compact_graph

        checked = copy.deepcopy(proto)
        compact_graph(proto.graph)
        _check_same_outputs(checked, proto, torch.cat([images[:4], images[:4].flip(-1)]))
    check_model(proto)
    meta = getattr(model, "qfair_quant", None) or {}

    def report(nbytes: int) -> dict[str, Any]:
        return {"format": "onnx", "target": spec.name, "onnx": str(out), "bytes": nbytes, "opset": opset,
                "ir_version": proto.ir_version, "bits": bits, "recipe": meta.get("recipe"),
                "wbits": meta.get("wbits") if bits is not None else None,
                "abits": meta.get("abits") if bits is not None else None,
                "quantized": bits is not None, "notes": ctx.notes, "parity_data": described,
                "parity": parity.to_dict(), **_summarised(layout), **source_record(run_dir, out)}

    # the graph and its report replace the old pair together (a stale report would mislabel the new graph)
    return write_with_report(out, lambda tmp: onnx.save_model(proto, str(tmp)), report)


def check_model(proto: Any) -> None:
    """``onnx.checker`` with shape inference on the graph about to be written; ExportError naming the problem."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails onnx.checker ({str(exc).splitlines()[0]}); nothing was written. "
                          "This is a qfair export bug: please report it with the output of --debug") from exc


def _check_same_outputs(before: Any, after: Any, images: torch.Tensor) -> None:
    """The compacted graph (what is written) must compute what the parity-checked graph computed."""
    from .parity import cosines, ort_session, run_onnx

    (a,) = run_onnx(ort_session(before), images)
    (b,) = run_onnx(ort_session(after), images)
    c = float(cosines(a, b).min())
    if c < 0.99999:
        raise ExportError(f"compacting the graph changed its outputs (cosine {c:.6f} to the parity-checked graph); "
                          "nothing was written. This is a qfair export bug: please report it; "
                          "--target tensorrt writes an uncompacted graph meanwhile")


def _build_and_check(spec: Any, ctx: Any, opset: int, pairs: np.ndarray | None, issame: np.ndarray | None,
                     cosine_gate: float | None, requant: bool = False) -> tuple[Any, dict[str, Any], Any]:
    """Export ``ctx.model``, lay it out for ``spec``, validate it, and compare it with the torch model:
    (graph, layout report, ParityReport)."""
    from .onnx_graph import torch_to_onnx
    from .parity import parity_check, simulate_output_quant
    from .validate import check_onnx

    proto = torch_to_onnx(ctx.model, opset)
    with _runtime_errors(f"laying out the graph for target {spec.name}"):
        layout = spec.build(proto, ctx)
    if ctx.quantized:
        check_onnx(proto, spec.rules, float_layers=layout.get("float_layers") or ())
    reference, evaluated = ctx.model, None
    if layout.get("output_quant") or layout.get("bias_shift"):  # the layout changes the math: gate on its twin
        reference = simulate_output_quant(ctx.model, layout["output_quant"], layout.get("bias_shift"))
        evaluated = ctx.model
    with _runtime_errors("the parity check (ONNX Runtime against the torch model)"):
        parity = parity_check(reference, proto, ctx.calib_images, bits=ctx.bits, pairs=pairs, issame=issame,
                              threshold=cosine_gate, evaluated=evaluated, gate_evaluated=not requant)
    return proto, layout, parity


@contextmanager
def _runtime_errors(step: str) -> Iterator[None]:
    """ONNX Runtime (or torch) failing on the exported graph -> ExportError naming the step; qfair errors pass."""
    try:
        yield
    except QfairError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"{step} failed: {type(exc).__name__}: {first}. Nothing was written. This is a qfair "
                          "export bug or a model the exporter cannot handle: please report it with the output "
                          "of --debug") from exc


def _summarised(layout: dict[str, Any]) -> dict[str, Any]:
    """The layout report for the JSON file: per-channel bias shifts become one line per layer (the
    largest shift), not thousands of numbers."""
    out = dict(layout)
    if "bias_shift" in out:
        out["bias_shift"] = {name: float(np.max(np.abs(v))) if len(v) else 0.0
                             for name, v in out["bias_shift"].items()}
    return out
