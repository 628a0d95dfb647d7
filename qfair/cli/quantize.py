"""``qfair quantize``: post-training quantization of a float face model into a run folder.

Thin: parse, resolve the config (``--config FILE`` + flags), load the float model, get calibration
batches from ``qfair.data.calibration_batches``, call ``qfair.quant.quantize`` and ``save_quantized``,
write report.md, print a summary.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..quant.config import QuantizeRunConfig

    p = sub.add_parser(
        "quantize", help="post-training quantization (8/6 bits, QuantFace or deploy placement)",
        description="Quantize a float face model with calibration images (real, synthetic or data-free) "
        "and write a run folder: config.yaml, model.pt, quant.json, report.md. Example: qfair quantize "
        "--model r50.pth --arch r50 --bits 6 --calib synthetic --out runs/r50-w6-syn")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
    add_config_arguments(p, QuantizeRunConfig)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in an --out folder that already holds one; its derived files (exported "
                        "model.onnx / model.qpk / model.engine and their *.export.json; the results evaluate, "
                        "compare and bench wrote there) are deleted, as listed")
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace, cls: type) -> Any:
    """Config from the file and the flags; ``--bits`` sets the widths unless ``--wbits/--abits`` are given."""
    from ..config import load_config, overrides_from_args

    return load_config(cls, args.config, overrides_from_args(args, cls))


def load_float_model(model: str | None, arch: str | None, allow_random: bool):
    """A float model from a checkpoint, or (only with ``allow_random``) a random registry model."""
    from ..models import MODELS, create_model, load_model
    from ..utils.errors import ConfigError

    if not model:
        raise ConfigError("--model is required: a float checkpoint (.pth / .pt) or a run folder")
    if Path(model).exists():
        from ..models.checkpoint import QuantizedCheckpointError

        try:
            return load_model(model, arch=arch)
        except QuantizedCheckpointError as exc:
            source = (f": pass --model {exc.float_source} (the float model its config.yaml names)"
                      if exc.float_source else "")
            raise ConfigError(f"--model {model} is an already-quantized model (run folder {exc.run_dir}), not a float "
                              f"checkpoint; quantize needs the float checkpoint{source}") from None
    if model in MODELS:
        if not allow_random:
            raise ConfigError(
                f"--model {model} is an architecture name, not a checkpoint: quantizing it would quantize a "
                "randomly initialised network (the reference code's known defect, README references [5]). Pass a "
                "checkpoint file, or --allow-random for a deliberate random-weight test")
        return create_model(model).eval()
    raise ConfigError(f"--model {model}: no such file, and not an architecture name (see `qfair models`)")


def calibration_source(calib: str, calib_data: str | None) -> str:
    from ..utils.errors import ConfigError

    if calib_data and calib in ("real", "synthetic") and not Path(calib_data).exists():
        raise ConfigError(f"--calib-data {calib_data}: no such file or folder (relative paths are read from "
                          f"{Path.cwd()}); give an image folder, a .rec (or a folder holding train.rec) or a .bin")
    if calib == "real":
        if not calib_data:
            raise ConfigError("--calib real needs --calib-data PATH (an image folder, .rec or .bin)")
        return f"real:{calib_data}"
    if calib == "synthetic":
        return f"synthetic:{calib_data}" if calib_data else "synthetic"
    if calib_data:  # the built-in sources read no folder: ignoring it would calibrate on other images than meant
        raise ConfigError(f"--calib-data {calib_data} is not read with --calib {calib} (built-in images); pass "
                          f"--calib real or --calib synthetic to calibrate on it, or drop --calib-data")
    return calib


def layer_rows(qmodel) -> list[list[Any]]:
    """One row per quantized layer: name, type, weight bits, activation bits (role), observer."""
    from ..quant import iter_quantizers

    rows: dict[str, dict[str, Any]] = {}
    for name, q in iter_quantizers(qmodel):
        layer = q.layer or name.rsplit(".", 1)[0]
        r = rows.setdefault(layer, {"type": type(qmodel.get_submodule(layer)).__name__ if layer else "",
                                    "w": "", "a": [], "obs": set()})
        if q.role == "weight":
            r["w"] = f"{q.bits}{'s' if q.symmetric else 'a'}{'/ch' if q.axis is not None else ''}"
        else:
            r["a"].append(f"{q.role}:{q.bits}{'s' if q.symmetric else 'a'}")
            r["obs"].add(q.observer_name)
    return [[k, v["type"], v["w"] or "-", " ".join(v["a"]) or "-", ",".join(sorted(v["obs"])) or "-"]
            for k, v in rows.items()]


def write_report(run, cfg, qmodel, cosine: float | None) -> None:
    meta = qmodel.qfair_quant
    lines = [f"# qfair quantize: {cfg.model}", "",
             f"- architecture: {getattr(qmodel, 'qfair_arch', {}).get('name', cfg.arch)}",
             f"- recipe: {meta['recipe']}; weights {meta['wbits']} bits, activations {meta['abits']} bits",
             f"- observers: activations {cfg.observer}, weights {cfg.weight_observer}",
             f"- calibration: {cfg.calib} ({cfg.calib_data or 'no folder'}), {meta.get('calib_images')} images",
             f"- PTQ improvements: {', '.join(cfg.ptq) or 'none'}",
             f"- float layers kept (skip patterns): {', '.join(meta.get('float_kept') or []) or 'none'}"]
    if cosine is not None:
        lines.append(f"- embedding cosine float vs quantized (first calibration batch): {cosine:.5f}")
    lines += ["", "| layer | type | weights | activations | observer |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in layer_rows(qmodel)]
    run.write_text("report.md", "\n".join(lines) + "\n")


def summary_table(qmodel, cosine: float | None):
    from collections import Counter

    from ._console import table

    counts = Counter((r[1], r[2], r[3].split(":")[-1] if r[3] != "-" else "-", r[4]) for r in layer_rows(qmodel))
    rows = [[t, n, w, a, o] for (t, w, a, o), n in sorted(counts.items())]
    meta = qmodel.qfair_quant
    title = (f"{meta['recipe']} W{meta['wbits']}A{meta['abits']}, {meta.get('calib_images')} calibration images"
             + (f", embedding cosine {cosine:.4f}" if cosine is not None else ""))
    return table(title, ["layer type", "layers", "weights", "activations", "observer"], rows)


def check_layer_patterns(model: Any, cfg: Any, config_file: str | None = None) -> None:
    """``skip`` / ``layer_wbits`` / ``layer_abits`` must name layers of ``model``: checked before the calibration
    images are made (data-free synthesis takes minutes), naming the config file the per-layer tables come from."""
    from ..quant.recipes import check_patterns
    from ..utils.errors import QuantError

    try:
        check_patterns(model, cfg.quant_config())
    except QuantError as exc:
        key = str(exc).partition(":")[0]
        if config_file and key in ("layer_wbits", "layer_abits"):  # keys only a config file sets
            raise QuantError(f"{config_file}: {exc}") from None
        raise


def model_and_calibration(cfg: Any, config_file: str | None = None) -> tuple[Any, list]:
    """The float model and its calibration batches for a run config (quantize, sensitivity)."""
    import torch

    from ..data import calibration_batches
    from ..utils.errors import ConfigError

    if not cfg.out:
        raise ConfigError("--out RUN_DIR is required")
    source = calibration_source(cfg.calib, cfg.calib_data)  # a wrong combination fails before the model loads
    torch.manual_seed(cfg.seed)
    model = load_float_model(cfg.model, cfg.arch, cfg.allow_random)
    check_layer_patterns(model, cfg, config_file)
    batches = calibration_batches(source, cfg.calib_size,
                                  cfg.calib_batch_size, model=model, seed=cfg.seed, skip_corrupt=cfg.skip_corrupt)
    return model, batches


RUN_FILES = ("model.pt", "quant.json")  # what makes a folder a quantize run


def check_out_folder(out: str | None, overwrite: bool) -> list[Path]:
    """Refuse an --out folder that holds a run, exports or results unless ``overwrite``; the derived
    files to delete before writing the new run (the run's own files are replaced atomically)."""
    from ..export.provenance import exports_in
    from ..runs import RunDir
    from ..utils.errors import ConfigError

    if not out or not Path(out).is_dir():
        return []
    folder = Path(out)
    run_files = [folder / n for n in RUN_FILES if (folder / n).is_file()]
    if not run_files:
        RunDir(folder).refuse_foreign(("qfair quantize", "qfair.save_quantized"))
    exports, results = exports_in(folder), evaluations_in(folder)
    derived = exports + results
    if (run_files or derived) and not overwrite:
        held = [f"a run ({', '.join(p.name for p in run_files)})"] if run_files else []
        held += [f"exports made from a model.pt ({', '.join(p.name for p in exports)})"] if exports else []
        held += [f"results measured on a model.pt ({', '.join(_short(folder, results))})"] if results else []
        deletes = f"; {', '.join(_short(folder, derived))} are deleted" if derived else ""
        raise ConfigError(f"--out {folder} already holds {' and '.join(held)}; quantizing into it would mix the "
                          "new model with the old files. Pick another --out, or pass --overwrite to replace the "
                          f"run (model.pt, quant.json, config.yaml and report.md are rewritten{deletes})")
    return derived


def evaluations_in(folder: Path) -> list[Path]:
    """What `qfair evaluate`, `compare` and `bench` wrote into a run folder about its model.pt."""
    from ..export.bench import BENCH_FILE
    from ..report import reports_in
    from .evaluate import IN_RUN_CONFIG, IN_RUN_REPORT

    extra = [folder / n for n in (IN_RUN_CONFIG, BENCH_FILE) if (folder / n).is_file()]
    if (folder / OLD_BENCH_DIR).is_dir():  # graphs older versions of `qfair bench` left in the run
        extra.append(folder / OLD_BENCH_DIR)
    return sorted({*reports_in(folder, IN_RUN_REPORT), *extra})


OLD_BENCH_DIR = "bench"


def _short(folder: Path, paths: list[Path]) -> list[str]:
    return [str(p.relative_to(folder)) for p in paths]


def remove_stale(paths: list[Path]) -> None:
    """Delete the old run's derived files (--overwrite), saying which."""
    from ._console import info

    import shutil

    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    if paths:
        info(f"--overwrite: deleted {', '.join(str(p) for p in paths)} (made from the previous model.pt)")


def with_resolved_arch(cfg: Any, model: Any) -> Any:
    """``cfg`` with ``arch`` set to the architecture actually loaded (guessed when --arch was omitted)."""
    import dataclasses

    name = (getattr(model, "qfair_arch", None) or {}).get("name")
    return dataclasses.replace(cfg, arch=name) if name and name != cfg.arch else cfg


def run(args: argparse.Namespace) -> int:
    from ..quant.config import QuantizeRunConfig

    cfg = resolve(args, QuantizeRunConfig)  # a bad setting fails before torch is imported (seconds)
    stale = check_out_folder(cfg.out, getattr(args, "overwrite", False))
    import torch

    from ..quant import quantize, save_quantized
    from ..runs import RunDir
    from ._console import console

    model, batches = model_and_calibration(cfg, getattr(args, "config", None))
    cfg = with_resolved_arch(cfg, model)
    source = calibration_source(cfg.calib, cfg.calib_data)
    probe: list[torch.Tensor] = []

    def keep_first(it):
        for b in it:
            if not probe:
                probe.append((b[0] if isinstance(b, (tuple, list)) else b)[:16])
            yield b

    RunDir.create(cfg.out)  # the folder (no config.yaml yet): a bad --out fails now, not after the calibration
    qmodel = quantize(model, cfg.quant_config(), keep_first(batches))
    cosine = None
    if probe:
        with torch.no_grad():
            cosine = float(torch.nn.functional.cosine_similarity(model(probe[0]), qmodel(probe[0])).mean())
    qmodel.qfair_quant["calib_source"] = source
    # config.yaml only now: written before the calibration, a Ctrl-C or an error there would leave it describing a
    # model that was never made (beside the old run's model.pt when --overwrite)
    run_dir = RunDir.create(cfg.out, cfg, command="qfair quantize")
    save_quantized(qmodel, run_dir)
    remove_stale(stale)  # only once the new run is saved: a failed quantize leaves the old exports usable
    write_report(run_dir, cfg, qmodel, cosine)
    console().print(summary_table(qmodel, cosine))
    kept = qmodel.qfair_quant.get("float_kept") or []
    default = "none (the network input, and for quantface the embedding head activations, stay float by recipe)"
    console().print(f"float layers kept: {', '.join(kept) if kept else default}")
    console().print(f"wrote {run_dir.path}/ (model.pt, quant.json, config.yaml, report.md)")
    return 0
