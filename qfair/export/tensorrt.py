"""TensorRT INT8 engines from the TensorRT-target ONNX graph (explicit quantization: the Q/DQ nodes
carry every scale, no calibrator; README references [8]), and a small runner for the evaluator.

Needs the ``tensorrt`` Python package and an NVIDIA GPU; without them every entry point raises a
MissingDependencyError that says which one is missing. Tested only where both exist.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import ExportError, MissingDependencyError, require
from ..utils.io import atomic_write_bytes, output_file

INPUT, OUTPUT = "input", "embedding"


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): whether TensorRT and a CUDA GPU are both present here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return False, f"the tensorrt package is not importable ({exc}); install TensorRT >= 10 on a GPU machine"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to torch; TensorRT engines can only be built and run on a GPU"
    return True, "ok"


def _require_tensorrt() -> Any:
    ok, why = tensorrt_status()
    if not ok:
        raise MissingDependencyError(f"TensorRT engine building needs TensorRT and an NVIDIA GPU: {why}")
    return require("tensorrt", "TensorRT engines", extra="tensorrt")


def build_engine(onnx_path: str | Path, out: str | Path | None = None, *, min_batch: int = 1, opt_batch: int = 16,
                 max_batch: int = 64, workspace_gib: float = 4.0, timing_cache: str | Path | None = None,
                 fp16: bool = False) -> Path:
    """Parse ``onnx_path``, build an INT8 engine with a dynamic-batch optimisation profile, serialise it.

    The profile covers batches ``min_batch..max_batch`` and is tuned for ``opt_batch`` (clamped into that
    range, so ``max_batch=8`` alone is a valid request).

    ``timing_cache`` (default: ``<engine>.timing.cache``) is read if present and rewritten after the
    build, so rebuilding on the same GPU is fast.

    The network is strongly typed where TensorRT has strong typing (9+; always on from 11): every tensor
    keeps the graph's type (float32, int8 between Q and DQ), so the engine computes what the parity-checked
    graph computes, and TensorRT's documented mode for explicit quantization takes no precision flags.
    ``fp16=True`` asks for the old weakly typed network with the INT8 and FP16 flags instead: faster float
    layers (PReLU, residual Adds, BatchNorm, float-kept layers) in float16, which is not what was checked.
    """
    if not 1 <= min_batch <= max_batch:
        raise ExportError(f"TensorRT optimisation profile: need 1 <= min_batch <= max_batch, got min_batch "
                          f"{min_batch}, max_batch {max_batch}")
    opt_batch = min(max(opt_batch, min_batch), max_batch)  # TensorRT refuses a profile with opt outside [min, max]
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX graph not found: {onnx_path}; write it with `qfair export RUN --format onnx "
                          "--target tensorrt`")
    out = Path(out) if out is not None else onnx_path.with_suffix(".engine")
    output_file(out)  # a bad output path fails before the (minutes long) build
    trt = _require_tensorrt()
    cache_path = Path(timing_cache) if timing_cache is not None else out.with_suffix(".timing.cache")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strong, precision_flags = _typing(trt, fp16)
    network = builder.create_network(_network_flags(trt, strong))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in precision_flags:
        config.set_flag(flag)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (min_batch, 3, 112, 112), (opt_batch, 3, 112, 112), (max_batch, 3, 112, 112))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    atomic_write_bytes(out, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return out


def _typing(trt: Any, fp16: bool) -> tuple[bool, list[Any]]:
    """(strongly typed network?, builder precision flags) for this TensorRT and ``fp16``."""
    creation = trt.NetworkDefinitionCreationFlag
    flags = trt.BuilderFlag
    has_strong = hasattr(creation, "STRONGLY_TYPED")
    if not fp16 and has_strong:
        return True, []  # precision flags are an error on a strongly typed network
    if fp16 and not hasattr(flags, "FP16"):
        raise ExportError("fp16=True needs a weakly typed network, which this TensorRT (11+) no longer builds; "
                          "build with fp16=False (the graph's own types)")
    wanted = ["INT8", "FP16"] if fp16 else ["INT8"]  # weakly typed: Q/DQ layers need the INT8 flag
    return False, [getattr(flags, f) for f in wanted if hasattr(flags, f)]


def _network_flags(trt: Any, strong: bool) -> int:
    """``create_network`` flags: STRONGLY_TYPED when ``strong``; EXPLICIT_BATCH where TensorRT < 10 needs it."""
    creation = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(creation.STRONGLY_TYPED) if strong else 0
    if hasattr(creation, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it, 10 ignores it
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return flags


class EngineRunner:
    """Runs a serialised engine on CUDA tensors: ``runner(x)`` with x (B, 3, 112, 112) -> (B, D) numpy."""

    def __init__(self, path: str | Path) -> None:
        trt = _require_tensorrt()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"TensorRT engine not found: {self.path}; build it with `qfair export RUN --format "
                              "tensorrt` (or qfair.export.build_engine on the graph of --target tensorrt)")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{self.path}: TensorRT cannot load this engine (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.max_batch = self.engine.get_tensor_profile_shape(INPUT, 0)[2][0]

    def __call__(self, x: Any) -> np.ndarray:
        import torch

        outs = []
        x = torch.as_tensor(x, dtype=torch.float32)
        for i in range(0, len(x), self.max_batch):
            chunk = x[i:i + self.max_batch].cuda().contiguous()
            self.context.set_input_shape(INPUT, tuple(chunk.shape))
            shape = tuple(self.context.get_tensor_shape(OUTPUT))
            out = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(INPUT, chunk.data_ptr())
            self.context.set_tensor_address(OUTPUT, out.data_ptr())
            # chunk and out were written on the current stream: the engine's stream must wait for them
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise ExportError(f"{self.path}: TensorRT execution failed")
            self.stream.synchronize()
            outs.append(out.cpu().numpy())
        return np.concatenate(outs)
