"""The TensorRT embedding backend (a serialised ``.engine`` from ``qfair export --format tensorrt``).

Imported on first use of the name "tensorrt" (see :func:`qfair.eval.backends.get_backend_class`);
needs TensorRT and an NVIDIA GPU, and says which is missing otherwise.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, Backend


@BACKENDS.register("tensorrt", aliases=("trt",))
class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        from ..export.tensorrt import EngineRunner

        self.path = Path(path)
        self.runner = EngineRunner(self.path)

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return isinstance(obj, (str, Path)) and str(obj).lower().endswith((".engine", ".plan"))

    def embed_batch(self, x: Any) -> np.ndarray:
        return self.runner(x).astype(np.float32)

    def fingerprint(self) -> str:
        return "trt|" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:28]

    def meta(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path)}
