"""``qfair study --config configs/study_*.yaml``: the calibration bias study on your models and data."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..study.config import StudyConfig

    p = sub.add_parser("study", help="run a models x bits x calibration x recipes study (resumable)",
                       description="Run every model x recipe x bits x calibration variant (plus KD fine-tuning and "
                                   "ONNX export), evaluate each per group and write one combined report. Rerunning "
                                   "the same command resumes: finished stages are read back, never recomputed (a "
                                   "finished stage whose settings changed is an error unless --recompute).")
    p.add_argument("--config", metavar="FILE", required=True,
                   help="study YAML (see configs/study_*.yaml); relative paths in it (checkpoints, data, bench, out) "
                        "are read from the folder qfair runs in, not from the YAML file's folder")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, checkpoints, data paths and benchmarks, print the stages the study would "
                        "run (in order; finished ones marked, with changed settings or damaged files) and stop; "
                        "nothing is written")
    p.add_argument("--recompute", action="store_true",
                   help="rebuild finished stages whose settings changed since they were made (and the stages "
                        "built from them), replacing their results; without it such a study stops with an error")
    add_config_arguments(p, StudyConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, overrides_from_args
    from ..study import run_study
    from ..study.config import StudyConfig
    from .demo import print_study, term_as_interrupt

    cfg = load_config(StudyConfig, args.config, overrides_from_args(args, StudyConfig))
    if args.dry_run:
        from ..study.dry_run import SETTINGS_CHANGED, describe_plan
        from ..study.runner import preflight

        preflight(cfg, source=args.config)
        print(f"qfair study {cfg.name!r} -> {cfg.out} (dry run: nothing was run or written)")
        print(f"benchmarks: {', '.join(cfg.bench)}")
        lines = describe_plan(cfg, recompute=args.recompute)
        for line in lines:
            print(line)
        if not any(f", {SETTINGS_CHANGED}: " in line for line in lines):
            print("finished stages are read back, not recomputed")
        elif args.recompute:
            print(f"--recompute: the stages marked '{SETTINGS_CHANGED}' are rebuilt (their results are replaced)")
        else:
            print(f"the study stops before running anything, because of the stages marked '{SETTINGS_CHANGED}': "
                  "rerun with --recompute to rebuild them, or choose a new output folder to keep them")
        return 0
    with term_as_interrupt():
        res = run_study(cfg, recompute=args.recompute, source=args.config)
    print_study(res)
    return 0
