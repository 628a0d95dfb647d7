"""qfair's exception types.

Every error a user can cause derives from :class:`QfairError`; the CLI prints its message
without a traceback. Messages say what was wrong, where (file, line, layer, key) and what to do.
"""
from __future__ import annotations


class QfairError(Exception):
    """Base class of every error caused by user input (bad file, bad flag, bad config)."""


class ConfigError(QfairError, ValueError):
    """A config file or flag is invalid (unknown key, wrong type, value out of range)."""


class CheckpointError(QfairError):
    """A checkpoint cannot be read or does not match the requested architecture."""


class DataError(QfairError):
    """A data file or folder is missing, corrupt or malformed."""


class UnsafeFileError(DataError):
    """A file tried to do something a data file must never do (for example run code)."""


class QuantError(QfairError):
    """Quantization cannot proceed (bad bits, NaN during calibration, nothing to quantize...)."""


class NonFiniteError(QuantError):
    """NaN or Inf reached a quantizer that records ranges: ``role`` (input, output, ...) of ``layer``.
    Calibration reports it as bad images or a bad checkpoint, training as divergence."""

    def __init__(self, message: str, *, role: str, layer: str) -> None:
        super().__init__(message)
        self.role, self.layer = role, layer


class ExportError(QfairError):
    """An export failed (parity check, missing runtime, bad target...)."""


class MissingDependencyError(QfairError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""


def require(module: str, feature: str, extra: str | None = None):
    """Import an optional module or raise a clear :class:`MissingDependencyError`.

    Example: ``ort = require("onnxruntime", "ONNX Runtime evaluation", extra="onnx")``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = f"pip install 'qfair[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"{feature} needs the optional package '{module}', which is not importable ({exc}). "
            f"Install it with: {hint}"
        ) from exc


def require_module(obj: object, head: str, *, error: type[QfairError] = QfairError,
                   load_with: str = "qfair.load_model(path, arch=...)") -> None:
    """Raise ``error`` when ``obj`` is not a torch ``nn.Module``: "``head`` a torch nn.Module, got str",
    e.g. ``head="kd_finetune: teacher must be"``; a path gets the hint to load it first with
    ``load_with``. torch is imported only when this is called."""
    import os

    from torch import nn

    if not isinstance(obj, nn.Module):
        hint = f" (a path: load it first with {load_with})" if isinstance(obj, (str, os.PathLike)) else ""
        raise error(f"{head} a torch nn.Module, got {type(obj).__name__}{hint}")
