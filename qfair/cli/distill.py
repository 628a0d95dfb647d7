"""``qfair distill``: a smaller student architecture learns from a teacher (the distillation study).

Thin: parse, resolve the settings as ``qfair qat`` does (file + flags; with ``--resume`` the run's own
config.yaml first), call :func:`qfair.train.distill`, print.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..train.config import DistillConfig
    from .qat import add_common, interrupted

    p = sub.add_parser("distill", help="distil a teacher into a smaller (optionally quantized) student",
                       description="Knowledge distillation into another architecture: margin loss + lambda x "
                       "MSE of unit embeddings (configs/distill_elastic_mbf.yaml reproduces the study's recipe); "
                       "teacher embeddings are computed once and cached; optional projection and quantization.")
    add_common(p)
    add_config_arguments(p, DistillConfig)
    p.set_defaults(func=run, interrupted=interrupted)


def run(args: argparse.Namespace) -> int:
    from ..train.api import distill
    from ..train.config import DistillConfig
    from .qat import run_training

    return run_training(args, DistillConfig, distill, "qfair distill")
