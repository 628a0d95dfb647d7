"""Studies: the real-versus-synthetic calibration bias study as one resumable pipeline.

``run_study(cfg)`` runs models x bits x calibration sources x recipes (+ KD fine-tuning, + export to
ONNX evaluated in ONNX Runtime) and writes one combined report. ``qfair demo`` is a study on the
shipped demo model and the built-in synthetic benchmark.

This package is, like the CLI, a place that wires stages together (data -> quant -> train -> export
-> eval -> report); the stages themselves never import it.
"""
from __future__ import annotations

from .config import CalibSpec, EvalSpec, ExportSpec, FinetuneSpec, ModelSpec, StudyConfig, demo_config
from .runner import StudyResult, run_study

__all__ = ["CalibSpec", "EvalSpec", "ExportSpec", "FinetuneSpec", "ModelSpec", "StudyConfig", "StudyResult",
           "demo_config", "run_study"]
