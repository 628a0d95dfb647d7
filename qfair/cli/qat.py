"""``qfair qat``: quantization-aware KD fine-tuning of a quantized student against its float teacher.

Thin: parse, resolve the settings (file + flags; with ``--resume`` the run's own config.yaml first), call
:func:`qfair.train.qat`, print. Under ``torchrun --nproc-per-node N -m qfair qat ...`` every rank runs it
(DDP; rank 0 prints and writes).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
    p.add_argument("--out", metavar="DIR", required=True, help="run folder to write (or to resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/checkpoints/last.pt with the settings it was started with, "
                   "read from OUT/config.yaml (its config: section), so `--out OUT --resume` alone is enough. A "
                   "--config file and flags given as well are applied on top of them; one that changes a setting "
                   "is refused, naming it, except --log-every, --checkpoint-every, --eval-every and --device. "
                   "Relative paths in it (checkpoints, run folders, data) are read from the current folder, or from "
                   "the folder the run was started in when the current one lacks them. "
                   "Ends with the weights of an uninterrupted run")


def interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The Ctrl-C message of ``qfair qat`` / ``qfair distill``: the run continues only with ``--resume``."""
    import shlex

    again = argv if "--resume" in argv else [*argv, "--resume"]
    if not (Path(args.out) / "checkpoints" / "last.pt").is_file():  # stopped before the first checkpoint
        return (f"interrupted before the first checkpoint was written: --resume starts {args.out} again from step 0 "
                f"with the same settings: qfair {shlex.join(again)}")
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


def _rate(summary: dict) -> str:
    """images/s of this session; a resume of a finished run trained nothing, so it has none."""
    if summary.get("resumed_from") is not None and summary["resumed_from"] >= summary["steps"]:
        return f"- (already finished at step {summary['steps']}; nothing trained)"
    return f"{summary['images_per_s']:.1f}"


def report(summary: dict, title: str) -> None:
    from ._console import console, table

    best = summary.get("best") or {}
    rows = [["steps", summary["steps"]], ["final loss", f"{summary['final_loss']:.5g}"],
            ["images/s", _rate(summary)], ["run folder", summary["out"]]]
    if summary.get("resumed_from") is not None:
        rows.append(["resumed from step", summary["resumed_from"]])
    if best:
        rows.append(["best (step)", f"{best['score']:.3f} ({best['step']})"])
        for g, acc in (best.get("metrics", {}).get("accuracy") or {}).items():
            rows.append([f"  {g} accuracy", f"{acc:.2f}"])
    console().print(table(title, ["", "value"], rows))


def settings(args: argparse.Namespace, cfg_cls: type, command: str) -> Any:
    """The settings of ``qfair qat`` / ``qfair distill``: the --config file, then the flags given. With --resume,
    the settings the run in --out was started with (the ``config:`` section of its config.yaml, relative paths
    read from the folder it was started in when the current folder lacks them) come first, so ``--out DIR
    --resume`` alone continues it; a --config file (other than that config.yaml) and the flags given now go on
    top, and the resume check (:func:`qfair.train.api._check_resume`) refuses a changed setting by name."""
    from ..config import config_from_dict, load_config, overrides_from_args
    from ..config.base import read_yaml
    from ..train.api import PATH_KEYS, resumed_settings, started_in
    from ..utils.errors import ConfigError

    flags = overrides_from_args(args, cfg_cls)
    record = Path(args.out) / "config.yaml"
    saved = resumed_settings(args.out, command) if args.resume and record.exists() else None  # (or another command's)
    if saved is None:
        try:
            return load_config(cfg_cls, args.config, flags)
        except ConfigError:
            if args.resume and not record.exists():
                resumed_settings(args.out, command)  # "nothing to resume" says more than a missing setting
            raise
    config_from_dict(cfg_cls, saved, source=str(record), prefix="config")  # names a key this version lacks
    own = args.config is not None and Path(args.config).resolve() == record.resolve()
    given = {**(read_yaml(args.config) if args.config and not own else {}), **flags}
    lost = [k for k in PATH_KEYS if k != "teacher_cache" and k not in given and isinstance(saved.get(k), str)
            and saved[k] and not Path(saved[k]).is_absolute() and not Path(saved[k]).exists()]
    if lost:  # (a missing teacher_cache folder is made, not lost)
        first = started_in(args.out)
        flag = f"--{lost[0].replace('_', '-')} PATH"
        named = ", ".join(f"{k} {saved[k]!r}" for k in lost)
        if first:
            raise ConfigError(f"--resume: {record} names {named}, a relative path in neither the current folder "
                              f"({Path.cwd()}) nor the folder the run was started in ({first}): pass the same file "
                              f"again ({flag}) or restore it")
        raise ConfigError(f"--resume: {record} names {named}, a relative path not in the current folder "
                          f"({Path.cwd()}), and this run did not record the folder it was started in: resume from "
                          f"that folder, or pass the same file again ({flag})")
    return load_config(cfg_cls, args.config if args.config and not own else None, flags, base=saved,
                       base_source=str(record))


def check_student(cfg: Any) -> None:
    """``--student`` is a run folder of `qfair quantize`; a float checkpoint file there is a mix-up with --model
    (said in the command line's terms, not load_quantized's)."""
    from ..utils.errors import ConfigError

    student = getattr(cfg, "student", None)
    if student and Path(student).is_file():
        raise ConfigError(f"--student {student} is a file; --student takes a run folder of `qfair quantize` (model.pt "
                          f"+ quant.json). To quantize a float checkpoint on the fly, pass it as --model {student} "
                          "(with --wbits/--abits) and drop --student")


def run_training(args: argparse.Namespace, cfg_cls: type, api: Callable[..., Any], command: str) -> int:
    """Shared body of ``qfair qat`` and ``qfair distill`` (``command``, also the summary's title): resolve the
    settings, join torchrun if launched by it, train, and print the summary on the main rank only."""
    from ..train.distributed import init_from_env, shutdown

    cfg = settings(args, cfg_cls, command)
    check_student(cfg)
    info = init_from_env()
    try:
        summary = api(cfg, args.out, resume=args.resume)
    finally:
        shutdown()
    if info.main:
        report(summary, command)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..train.api import qat
    from ..train.config import QatConfig

    return run_training(args, QatConfig, qat, "qfair qat")
