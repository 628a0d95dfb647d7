"""``qfair compare RUN_DIR ... [--reference RUN_DIR] --bench SPEC ... --out DIR``: evaluate several
variants on the same pairs and test, group by group, whether each differs from the reference."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = """Compare model variants (e.g. FP32, W8A8 and W6A6 with real or synthetic calibration) on the
same pairs: a study-style table with significance marks (McNemar per group, Holm-corrected), changes in
AVG/STD/SER with paired identity-bootstrap intervals, and FMR drift at the reference threshold."""


def register(subparsers: Any) -> None:
    from .evaluate import add_common

    p = subparsers.add_parser("compare", help="paired comparison of model variants, group by group",
                              description=DESCRIPTION)
    p.add_argument("targets", nargs="+", help="run folders, checkpoints or .onnx files")
    p.add_argument("--reference", help="the reference model (default: the first float model, else the first)")
    p.add_argument("--inherit-threshold", action="store_true",
                   help="evaluate every variant at the reference model's global threshold (the reference is "
                        "--reference, else the first float model, else the first target)")
    add_common(p)
    p.set_defaults(func=run)


def display_names(paths: list[str]) -> list[str]:
    """Folder/file names, prefixed by parent folders where two would clash."""
    names = [Path(p).name if Path(p).is_dir() else Path(p).stem for p in paths]
    for depth in range(1, 4):
        if len(set(names)) == len(names):
            break
        names = [Path(*Path(p).resolve().parts[-1 - depth:]).as_posix() for p in paths]
    return names


def check_distinct(targets: list[str]) -> None:
    """Refuse a model given twice (same file or folder, however spelled): its rows would be identical and
    both marked as the reference."""
    from ..utils.errors import ConfigError

    seen: dict[Path, str] = {}
    for t in targets:
        key = Path(t).resolve()
        if key in seen:
            same = f"'{t}'" if t == seen[key] else f"'{seen[key]}' and '{t}'"
            raise ConfigError(f"compare got the same model twice ({same} is {key}); give each model once "
                              "(--reference names one of the targets, or adds it when it is not among them)")
        seen[key] = t


def run(args: argparse.Namespace) -> int:
    from ..eval import compare
    from ..utils.errors import QfairError
    from ._console import info
    from .evaluate import check_out_folder, evaluate_target, finish, resolve

    targets = list(args.targets)
    check_distinct(targets)  # before loading any benchmark
    check_out_folder(args.out)
    missing = [f"{flag} {t}" for flag, t in [*(("target", t) for t in targets), ("--reference", args.reference)]
               if t and not Path(t).exists()]
    if missing:  # before loading any benchmark, every missing model named with where it was given
        raise QfairError(f"model not found: {'; '.join(missing)}. Pass run folders, checkpoint files, .qpk or "
                         ".onnx files")
    if args.reference and all(Path(t).resolve() != Path(args.reference).resolve() for t in targets):
        targets.insert(0, args.reference)
    if len(targets) < 2:  # before loading any benchmark
        raise QfairError("compare needs at least two models (targets plus --reference)")
    cfg, benches, cache = resolve(args)
    names = display_names(targets)
    ref_idx = next((i for i, t in enumerate(targets) if args.reference
                    and Path(t).resolve() == Path(args.reference).resolve()), None)
    order = ([ref_idx] if ref_idx is not None else []) + [i for i in range(len(targets)) if i != ref_idx]
    results: dict[int, list] = {}
    threshold = None
    for i in order:
        results[i] = evaluate_target(targets[i], benches, cfg, args, cache, name=names[i], threshold=threshold)
        if i == ref_idx and args.inherit_threshold:
            threshold = {r.benchmark: r.threshold["value"] for r in results[i]}
    if ref_idx is None:  # default: the first float model, else the first target
        ref_idx = next((i for i in range(len(targets)) if not results[i][0].meta.get("quantized")), 0)
        if args.inherit_threshold:  # the reference is known only now: move the others to its threshold
            from ..eval.metrics import with_threshold

            info(f"--inherit-threshold: evaluating every variant at the threshold of '{names[ref_idx]}'")
            ref_t = {r.benchmark: r.threshold["value"] for r in results[ref_idx]}
            for i in results:
                if i != ref_idx:
                    results[i] = [with_threshold(r, ref_t[r.benchmark]) for r in results[i]]
    flat = [r for i in range(len(targets)) for r in results[i]]
    comparisons = compare(flat, reference=names[ref_idx], exact_below=cfg.exact_below,
                          null_draws=cfg.null_draws)
    return finish(args, cfg, flat, comparisons, "qfair compare")
