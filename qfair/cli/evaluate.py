"""``qfair evaluate TARGET --bench SPEC ... --out DIR``: per-group verification accuracy, fairness
measures with intervals, tables and figures for one model (run folder, checkpoint, .qpk or .onnx)."""
from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """Evaluate one model group by group. TARGET is a run folder of `qfair quantize` (model.pt +
quant.json), a folder or file with a float checkpoint (give --arch if it cannot be guessed), a packed
model.qpk of `qfair export --format packed` (rebuilt from what it records, run with torch), or a
model.onnx (ONNX Runtime). Writes report.md, metrics.json, results.csv, tables.tex and figures/ (into a
model's own run folder: eval_report.md and eval_config.yaml, keeping the run's report.md and config.yaml)."""


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags shared by evaluate and compare."""
    from ..config import add_config_arguments
    from ..eval.config import EvalConfig

    p.add_argument("--bench", action="append", default=[], metavar="SPEC",
                   help="benchmark spec, repeatable: rfw:/data/RFW, lfw:/x/lfw.bin, csv:pairs.csv, builtin[:SIZE] "
                        "with SIZE tiny, small, default, large or a number of genuine pairs per group "
                        "(default: builtin)")
    p.add_argument("--arch", help="architecture of a float checkpoint (see `qfair models`)")
    p.add_argument("--backend", help="embedding backend: torch, onnxruntime or tensorrt (an .engine file) "
                                     "(default: from the target)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--groups", nargs="+", help="evaluate only these groups (each must have pairs)")
    p.add_argument("--cache-dir", help="embedding cache folder (default: $QFAIR_CACHE/embeddings, else "
                                       "$QFAIR_CACHE_DIR/embeddings, else ~/.cache/qfair/embeddings)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images (and their pairs) instead of stopping; the counts are reported")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below (flags override it)")
    add_config_arguments(p, EvalConfig)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="per-group accuracy and fairness of one model",
                              description=DESCRIPTION)
    p.add_argument("target", help="run folder, checkpoint file, packed .qpk file or .onnx file")
    add_common(p)
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace):
    """(EvalConfig, [VerificationSet], cache_dir or None) from the parsed flags."""
    from ..config import load_config, overrides_from_args
    from ..data import open_benchmark
    from ..eval.config import EvalConfig
    from ..eval.embed import default_cache_dir
    from ._console import info

    cfg = load_config(EvalConfig, args.config, overrides_from_args(args, EvalConfig))
    specs = args.bench or ["builtin"]
    if not args.bench:
        info("no --bench given: using the built-in synthetic benchmark (real conclusions need RFW)")
    benches = []
    for s in specs:
        if getattr(args, "skip_corrupt", False) and not s.startswith("builtin"):
            vset = open_benchmark(s, skip_corrupt=True)
            skipped_i, skipped_p = vset.meta.get("skipped_images", 0), vset.meta.get("skipped_pairs", 0)
            info(f"{s}: skipped {skipped_i} corrupt images and {skipped_p} pairs that used them")
        else:
            vset = open_benchmark(s)
        benches.append(vset)
    cache = (args.cache_dir or default_cache_dir()) if cfg.cache else None
    return cfg, benches, cache


def evaluate_target(target: Any, benches: list, cfg: Any, args: argparse.Namespace, cache: Any,
                    name: str | None = None, threshold: dict | None = None) -> list:
    """Load ``target`` once and evaluate it on every benchmark; ``threshold`` maps benchmark -> value."""
    from ..eval import evaluate
    from ..eval.targets import load_target

    be, display, meta = load_target(target, arch=args.arch, backend=args.backend, name=name)
    out = []
    for vset in benches:
        out.append(evaluate(be, vset, name=display, meta=meta, flip=cfg.flip, batch_size=cfg.batch_size,
                            cache_dir=cache, mode=cfg.mode, n_folds=cfg.n_folds, target_fmr=cfg.target_fmr,
                            threshold=(threshold or {}).get(vset.name), alpha=cfg.alpha, ddof=cfg.ddof,
                            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, groups=args.groups))
    return out


def check_arch(target: str, arch: str | None) -> None:
    """--arch describes a float checkpoint; a quantized run folder, a packed .qpk and an exported graph record
    their architecture, so an --arch given with one would be ignored without a word: refuse it."""
    from pathlib import Path

    from ..utils.errors import ConfigError

    path = Path(target)
    records = ("a quantized run folder (its quant.json records the architecture)" if (path / "quant.json").is_file()
               else f"a {path.suffix} file (it records its architecture)"
               if path.is_file() and path.suffix.lower() in (".qpk", ".onnx", ".engine") else None)
    if arch and records:
        raise ConfigError(f"--arch {arch} describes a float checkpoint; {target} is {records}: drop --arch")


# Names used when --out is a model's run folder, whose config.yaml and report.md are the model's own.
IN_RUN_CONFIG = "eval_config.yaml"
IN_RUN_REPORT = "eval_report.md"
MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".engine", ".qpk")


def in_model_folder(out: str) -> bool:
    """True when ``out`` is another command's run folder holding a model (a `qfair quantize`, qat or
    distill run), not a folder an earlier evaluate or compare wrote."""
    from pathlib import Path

    folder = Path(out)
    return (folder / "config.yaml").is_file() and any(
        p.suffix in MODEL_SUFFIXES and p.is_file() for p in folder.iterdir())


OWN_COMMANDS = ("qfair evaluate", "qfair compare")  # whose report folders evaluate and compare may replace


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (``qfair evaluate ...``), recorded in config.yaml: the record by which a later
    evaluate or compare recognises the folder as its own."""
    import shlex
    import sys

    return shlex.join(["qfair", *getattr(args, "argv", sys.argv[1:])])


def check_out_folder(out: str) -> None:
    """Before any benchmark is read: ``--out`` must be a folder that can be written, and not another command's
    run whose config.yaml would be replaced (a sensitivity or study folder: its files would then be described
    by evaluate's settings). A model's own run folder is fine (eval_config.yaml and eval_report.md go there)."""
    from pathlib import Path

    from ..runs import RunDir
    from ..utils.errors import ConfigError

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; pass a folder for the report (it is created "
                          "if missing)")
    if folder.is_dir() and not in_model_folder(out):
        RunDir(folder).refuse_foreign(OWN_COMMANDS)


def finish(args: argparse.Namespace, cfg: Any, results: list, comparisons: list, title: str) -> int:
    """Write the report folder and print the tables."""
    from ..report import build_tables, to_rich, write_report
    from ..runs import RunDir
    from ._console import console, info

    if in_model_folder(args.out):  # the model's own run folder: keep its config.yaml and report.md
        import datetime as _dt

        from ..config import config_to_dict
        from ..runs import dump_yaml, package_versions

        doc = {"command": command_line(args),  # what config.yaml records for other runs
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "seed": cfg.seed, "config": config_to_dict(cfg), "versions": package_versions()}
        RunDir.open(args.out).write_text(IN_RUN_CONFIG, dump_yaml(doc))
        report_name = IN_RUN_REPORT
    else:
        RunDir.create(args.out, cfg, command=command_line(args))
        report_name = "report.md"
    written = write_report(args.out, results, comparisons, figures=cfg.figures, title=title,
                           report_name=report_name)
    for t in build_tables(results, comparisons):
        console().print(to_rich(t))
        for n in t.notes:
            info(f"  note: {n}")
    info(f"wrote {', '.join(sorted(str(p.relative_to(args.out)) for p in written.values()))} to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    check_out_folder(args.out)
    check_arch(args.target, args.arch)  # (compare's --arch is for whichever of its targets is a float checkpoint)
    cfg, benches, cache = resolve(args)
    results = evaluate_target(args.target, benches, cfg, args, cache)
    return finish(args, cfg, results, [], f"qfair evaluate {args.target}")
