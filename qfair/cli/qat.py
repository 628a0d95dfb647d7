"""``qfair qat``: quantization-aware KD fine-tuning of a quantized student against its float teacher.

Thin: parse, load the config (file + flags), call :func:`qfair.train.qat`, print. Under
``torchrun --nproc-per-node N -m qfair qat ...`` every rank runs it (DDP; rank 0 prints and writes).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
    p.add_argument("--out", metavar="DIR", required=True, help="run folder to write (or to resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/checkpoints/last.pt, with the settings it was started "
                   "with (ends with the weights of an uninterrupted run)")


def interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The Ctrl-C message of ``qfair qat`` / ``qfair distill``: the run continues only with ``--resume``."""
    import shlex

    again = argv if "--resume" in argv else [*argv, "--resume"]
    return (f"interrupted; the checkpoints in {args.out}/checkpoints are kept. Continue from the last one with "
            f"--resume: qfair {shlex.join(again)}")


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..train.config import QatConfig

    p = sub.add_parser("qat", help="KD fine-tuning of a quantized model against its float teacher",
                       description="Quantization-aware fine-tuning with knowledge distillation (QuantFace "
                       "recipe by default: configs/qat_kd_w6a6.yaml). The student is a `qfair quantize` run "
                       "folder (--student) or built on the fly from --model; the teacher is the float model.")
    add_common(p)
    add_config_arguments(p, QatConfig)
    p.set_defaults(func=run, interrupted=interrupted)


def report(summary: dict, title: str) -> None:
    from ._console import console, table

    best = summary.get("best") or {}
    rows = [["steps", summary["steps"]], ["final loss", f"{summary['final_loss']:.5g}"],
            ["images/s", f"{summary['images_per_s']:.1f}"], ["run folder", summary["out"]]]
    if summary.get("resumed_from") is not None:
        rows.append(["resumed from step", summary["resumed_from"]])
    if best:
        rows.append(["best (step)", f"{best['score']:.3f} ({best['step']})"])
        for g, acc in (best.get("metrics", {}).get("accuracy") or {}).items():
            rows.append([f"  {g} accuracy", f"{acc:.2f}"])
    console().print(table(title, ["", "value"], rows))


def run_training(args: argparse.Namespace, cfg_cls: type, api: Callable[..., Any], title: str) -> int:
    """Shared body of ``qfair qat`` and ``qfair distill``: resolve the config, join torchrun if launched
    by it, train, and print the summary on the main rank only."""
    from ..config import load_config, overrides_from_args
    from ..train.distributed import init_from_env, shutdown

    cfg = load_config(cfg_cls, args.config, overrides_from_args(args, cfg_cls))
    info = init_from_env()
    try:
        summary = api(cfg, args.out, resume=args.resume)
    finally:
        shutdown()
    if info.main:
        report(summary, title)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..train.api import qat
    from ..train.config import QatConfig

    return run_training(args, QatConfig, qat, "qfair qat")
