"""``qfair export RUN_DIR --format onnx|tensorrt|packed --target tensorrt|onnxruntime [--out PATH]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = """Export a quantized run for deployment. --format onnx writes a Q/DQ graph laid out for
--target tensorrt (explicit quantization, symmetric int8; 6-bit models stay exactly 6-bit) or
onnxruntime (integer-kernel fusion on x86); the graph is validated against the target's rules and
compared with the fake-quant model on real and stress images (cosine >= 0.999 at 8 bits, 0.995 at 6,
accuracy within 0.1 pp) -- a failed check writes nothing. --format tensorrt also builds an INT8 engine
(needs TensorRT and a GPU; the graph goes to RUN_DIR/model.onnx, --out names the engine); --format packed
writes the weights at their bit width (.qpk), read back and checked exact before it is written. Every
export writes a JSON report beside its file (model.onnx: model.export.json; model.qpk: model.qpk.export.json)."""


def register(subparsers: Any) -> None:
    from ..config import add_config_arguments
    from ..export.config import ExportConfig

    p = subparsers.add_parser("export", help="ONNX / TensorRT / packed export with parity checks",
                              description=DESCRIPTION)
    p.add_argument("run_dir", help="run folder of `qfair quantize` (a float checkpoint file exports as float "
                   "with --out FILE.onnx)")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below (flags override it)")
    add_config_arguments(p, ExportConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_config, overrides_from_args
    from ..export.config import ExportConfig
    from ..utils.errors import QfairError
    from ..utils.io import output_file
    from ._console import console, info, table

    cfg = load_config(ExportConfig, args.config, overrides_from_args(args, ExportConfig))
    run_dir = Path(args.run_dir)
    if cfg.out:  # a bad --out fails now, not after the export work
        output_file(cfg.out)
        check_out_suffix(cfg.out, cfg.format)
    if not run_dir.is_dir() and not cfg.out and run_dir.exists():  # a checkpoint file has no folder to write into
        suffix = {"packed": ".qpk", "tensorrt": ".engine"}.get(cfg.format, ".onnx")
        raise QfairError(f"{run_dir} is a file, not a run folder: pass --out FILE{suffix} to say where the export "
                         f"goes (e.g. --out {run_dir.with_suffix(suffix)})")
    if cfg.format == "packed":
        from ..export.packed import export_packed
        from ..export.provenance import export_report_path

        out = export_packed(run_dir, cfg.out, float_dtype=cfg.packed_floats)
        size = out.stat().st_size
        ref = run_dir / "model.pt"
        ratio = f" ({size / ref.stat().st_size:.3f}x of model.pt)" if ref.is_file() else ""
        info(f"wrote {out}: {size / 1e6:.2f} MB{ratio}; report {export_report_path(out)}")
        return 0
    from ..export.api import export_onnx

    if cfg.format == "tensorrt":  # say what is missing before spending minutes on the ONNX export
        from ..export.tensorrt import tensorrt_status
        from ..utils.errors import MissingDependencyError

        ok, why = tensorrt_status()
        if not ok:
            raise MissingDependencyError(f"--format tensorrt needs TensorRT and an NVIDIA GPU: {why}. "
                                         "--format onnx --target tensorrt writes the graph TensorRT would read.")
    onnx_out = cfg.out if cfg.format == "onnx" else None
    if cfg.format == "tensorrt" and not run_dir.is_dir() and cfg.out:  # a checkpoint: the graph goes beside the engine
        onnx_out = str(Path(cfg.out).with_suffix(".onnx"))
    _say_if_replacing(Path(onnx_out) if onnx_out else run_dir / "model.onnx", cfg.target)
    path = export_onnx(run_dir, cfg.target, out=onnx_out, parity_data=cfg.parity, n_parity=cfg.n_parity,
                       opset=cfg.opset, keep_float=cfg.keep_float,
                       requant=cfg.requant)
    import json

    from ..export.provenance import export_report_path

    rep = json.loads(export_report_path(path).read_text())
    par = rep["parity"]
    rows = [["file", str(path)], ["size", f"{rep['bytes'] / 1e6:.2f} MB"], ["bits", rep["bits"] or "float"],
            ["parity cosine (mean / min)", f"{par['cosine_mean']:.5f} / {par['cosine_min']:.5f}"],
            ["stress inputs saturated", f"{par['clipped_fraction'] * 100:.2f}% of activations"]]
    if par.get("evaluated_cosine_mean") is not None:
        rows.append(["cosine vs evaluated model", f"{par['evaluated_cosine_mean']:.5f}"])
    if par.get("acc_torch") is not None:
        rows.append(["accuracy torch / onnx",
                     f"{par['acc_torch']:.2f}% / {par['acc_onnx']:.2f}% ({par['n_pairs']} pairs)"])
    if rep.get("float_layers"):
        rows.append(["layers kept float", ", ".join(rep["float_layers"])])
    if rep.get("keep_float"):
        rows.append(["keep_float choice", f"{rep['keep_float']} (measured: {rep.get('latency_s_batch8')})"])
    console().print(table(f"export for {rep['target']}", ["", "value"], rows))
    for note in rep.get("notes", []):
        info(f"note: {note}")
    if cfg.format == "tensorrt":
        from ..export.tensorrt import build_engine

        out = cfg.out or path.with_suffix(".engine")
        engine = build_engine(path, out, max_batch=cfg.max_batch, opt_batch=min(16, cfg.max_batch))
        info(f"wrote TensorRT engine {engine}")
    return 0


# What --out must end with for each --format (evaluate and the runtimes tell the files apart by it: a packed file
# named .onnx would be handed to ONNX Runtime); a TensorRT engine may end as the user likes, but not as another format.
OUT_SUFFIX = {"onnx": ".onnx", "packed": ".qpk"}
OTHER_SUFFIXES = (".onnx", ".qpk", ".pt", ".pth", ".safetensors", ".json", ".yaml")


def check_out_suffix(out: str, fmt: str) -> None:
    """Refuse an --out whose extension says another kind of file than --format writes."""
    from ..utils.errors import ConfigError

    suffix = Path(out).suffix.lower()
    want = OUT_SUFFIX.get(fmt)
    wrong = suffix != want if want else suffix in OTHER_SUFFIXES
    if wrong:
        fix = Path(out).with_suffix(want or ".engine")
        raise ConfigError(f"--out {out}: --format {fmt} writes {want + ' files' if want else 'TensorRT engines'}, "
                          f"but the name ends in {suffix or 'no extension'}; pass e.g. --out {fix} (or the --format "
                          "that file should hold)")


def _say_if_replacing(graph: Path, target: str) -> None:
    """Say so when the export is about to replace a graph made for another target (one model.onnx per
    folder unless --out names another file)."""
    import json

    from ..export.provenance import export_report_path
    from ._console import info

    try:
        old = json.loads(export_report_path(graph).read_text(encoding="utf-8")).get("target")
    except (OSError, ValueError, AttributeError):
        return
    if old and old != target:
        info(f"note: replacing {graph} (exported for target {old}) with the {target} graph; pass --out "
             f"{graph.with_name(graph.stem + '-' + target + '.onnx')} to keep both")
