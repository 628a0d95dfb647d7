"""Embedding backends: the thing that turns a float image batch into raw embeddings.

A backend has ``name``, ``embed_batch(x) -> (B, D) float32`` (raw, not normalised; ``x`` is a float
tensor (B, 3, 112, 112) in [-1, 1]), ``fingerprint() -> str`` (identifies the weights, for the
embedding cache), ``meta() -> dict`` and is a context manager (set up / restore around a pass).

Backends are registered in :data:`BACKENDS`. A new runtime is one class::

    @BACKENDS.register("tensorrt")
    class TensorRTBackend(Backend):
        @classmethod
        def accepts(cls, obj): return str(obj).endswith(".engine")
        ...

placed in ``qfair/eval/backend_<name>.py`` (imported on first use of the name) or in any module the
caller imports. ``make_backend(obj, name=None)`` picks by name, or asks each backend whether it
``accepts`` the object (a torch module, an ``.onnx`` path, ...).
"""
from __future__ import annotations

import abc
import hashlib
import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import CheckpointError, QfairError, require
from ..utils.registry import Registry

BACKENDS: Registry[type["Backend"]] = Registry("backend")


class Backend(abc.ABC):
    """Base class of embedding backends (see module docstring)."""

    name = "base"

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return False

    @abc.abstractmethod
    def embed_batch(self, x: Any) -> np.ndarray:
        """Implemented by every subclass."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Implemented by every subclass."""

    def meta(self) -> dict[str, Any]:
        return {"backend": self.name}

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@BACKENDS.register("torch", aliases=("pytorch",))
class TorchBackend(Backend):
    """A torch ``nn.Module`` (float or fake-quant) or the path of a packed ``.qpk`` checkpoint (loaded as
    the quantized model it holds): eval mode and ``no_grad`` during a pass, training flags restored
    afterwards; batches are moved to the model's device."""

    name = "torch"

    def __init__(self, model: Any, device: str | None = None) -> None:
        import torch

        if isinstance(model, (str, Path)):
            from ..export.packed import is_packed_file, load_packed_model

            model = load_packed_model(model) if is_packed_file(model) else model
        if not isinstance(model, torch.nn.Module):
            raise QfairError(f"the torch backend needs an nn.Module, got {type(model).__name__}")
        self.model = model
        p = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device else (p.device if p is not None else torch.device("cpu"))
        self._modes: dict[Any, bool] = {}

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        if isinstance(obj, (str, Path)):
            return str(obj).lower().endswith(".qpk")  # a packed checkpoint of `qfair export --format packed`
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.nn.Module)

    def __enter__(self) -> "TorchBackend":
        self._modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self._modes.items():
            m.training = mode

    def embed_batch(self, x: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(x.to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().cpu().numpy()

    def fingerprint(self) -> str:
        import torch

        h = hashlib.sha256(type(self.model).__name__.encode())
        for k, v in self.model.state_dict().items():
            if not isinstance(v, torch.Tensor):
                continue
            h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        h.update(json.dumps(self.quant_meta(), sort_keys=True, default=str).encode())
        return h.hexdigest()[:32]

    def quant_meta(self) -> dict[str, Any]:
        q = getattr(self.model, "qfair_quant", None)
        return dict(q) if isinstance(q, dict) else {}

    def meta(self) -> dict[str, Any]:
        q = self.quant_meta()
        return {"backend": self.name, "arch": type(self.model).__name__, "quantized": bool(q), "quant": q}


@BACKENDS.register("onnxruntime", aliases=("ort", "onnx"))
class OnnxRuntimeBackend(Backend):
    """An ONNX file run by ONNX Runtime (input "input", output "embedding"; a graph with a single
    input/output is also accepted). A fixed batch dimension is honoured by splitting batches."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        ort = require("onnxruntime", "ONNX Runtime evaluation", extra="onnx")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model not found: {self.path}")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{self.path}: ONNX Runtime cannot load this model: {exc}") from exc
        self.input = self._pick([i.name for i in self.session.get_inputs()], "input", "input")
        self.output = self._pick([o.name for o in self.session.get_outputs()], "embedding", "output")
        dim0 = next(i for i in self.session.get_inputs() if i.name == self.input).shape[0]
        self.fixed_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def _pick(self, names: list[str], wanted: str, kind: str) -> str:
        if wanted in names:
            return wanted
        if len(names) == 1:
            return names[0]
        raise CheckpointError(f"{self.path}: expected an {kind} named '{wanted}' (or a single {kind}), "
                              f"found {names}. Re-export with `qfair export`.")

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return isinstance(obj, (str, Path)) and str(obj).lower().endswith(".onnx")

    def embed_batch(self, x: Any) -> np.ndarray:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.fixed_batch is None or len(arr) == self.fixed_batch:
            return np.asarray(self.session.run([self.output], {self.input: arr})[0], dtype=np.float32)
        outs = []
        fb = self.fixed_batch
        for s in range(0, len(arr), fb):
            chunk = arr[s:s + fb]
            pad = fb - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            outs.append(self.session.run([self.output], {self.input: chunk})[0][: fb - pad])
        return np.concatenate(outs).astype(np.float32)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"onnx|")
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:32]

    def meta(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path),
                "providers": list(self.session.get_providers())}


_ACCEPTS = {"torch": "it takes a torch nn.Module or the path of a packed .qpk checkpoint",
            "onnxruntime": "it takes the path of an .onnx file",
            "tensorrt": "it takes the path of a TensorRT .engine file"}


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; imports ``qfair.eval.backend_<name>`` on first use."""
    if name not in BACKENDS:
        try:
            import_module(f"qfair.eval.backend_{name.lower()}")
        except ModuleNotFoundError as exc:
            if exc.name != f"qfair.eval.backend_{name.lower()}":
                raise
    return BACKENDS.get(name)


def make_backend(obj: Any, name: str | None = None, **options: Any) -> Backend:
    """A backend for ``obj``: itself if it is one, the backend ``name``, or the first that accepts it."""
    if isinstance(obj, Backend):
        return obj
    if name is not None:
        cls = get_backend_class(name)
        try:
            return cls(obj, **options)
        except (TypeError, AttributeError) as exc:  # e.g. an nn.Module handed to the ONNX Runtime backend
            if cls.accepts(obj):
                raise
            raise QfairError(f"backend '{name}' cannot run a {type(obj).__name__} ({exc}); "
                             f"{_ACCEPTS.get(cls.name, 'see its documentation')}, or leave backend out to pick "
                             "the one that accepts it") from None
    for key in BACKENDS.names():
        cls = BACKENDS.get(key)
        if cls.accepts(obj):
            return cls(obj, **options)
    raise QfairError(f"no embedding backend accepts a {type(obj).__name__} ({obj!r:.80}); pass a torch "
                     f"nn.Module, a .qpk or .onnx path, or name a backend ({', '.join(BACKENDS.names())})")
