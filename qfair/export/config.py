"""Settings of ``qfair export`` and ``qfair bench`` (YAML keys mirror the flags)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import cfg_field, validate_fields
from ..utils.errors import ConfigError


def _targets() -> list[str]:
    from .targets import TARGETS

    return TARGETS.names()


@dataclass(frozen=True)
class ExportConfig:
    """``qfair export RUN_DIR``."""

    format: str = cfg_field("onnx", help="what to write: onnx graph, tensorrt engine, or packed low-bit checkpoint",
                            choices=["onnx", "tensorrt", "packed"])
    target: str = cfg_field("tensorrt", help="runtime the ONNX graph is laid out for", choices=_targets)
    out: Optional[str] = cfg_field(None, help="output file (default: RUN_DIR/model.onnx|.engine|.qpk); its report "
                                "goes beside it (m.onnx: m.export.json; m.qpk: m.qpk.export.json)")
    parity: Optional[str] = cfg_field(None, help="benchmark spec whose images and pairs gate parity "
                                      "(default: builtin:tiny)")
    n_parity: int = cfg_field(64, help="real images used for the parity check", range=(2, 100000))
    keep_float: str = cfg_field("auto", help="onnxruntime target: layers kept in float: auto (each layer int8 or "
                                "float, whichever ONNX Runtime measures faster), none, depthwise or all",
                                choices=["auto", "none", "depthwise", "all"])
    requant: bool = cfg_field(False, help="onnxruntime target: ship the integer-kernel layout even when its extra "
                              "uint8 re-quantization of conv outputs moves the embeddings below the cosine gate "
                              "against the evaluated model (that cosine is still reported, the accuracy gate "
                              "still applies); without it such a layout falls back to the exact one")
    opset: int = cfg_field(18, help="ONNX opset, 17..21 (17 is converted down from 18)", range=(17, 21))
    packed_floats: str = cfg_field("float32", help="packed format: storage of the float tensors (BatchNorm, "
                                   "PReLU); float16 is smaller but not exact for them",
                                   choices=["float32", "float16"])
    max_batch: int = cfg_field(64, help="tensorrt format: largest batch of the engine's optimisation profile "
                               "(batches 1..max_batch, tuned for min(16, max_batch)); ONNX graphs always have a "
                               "dynamic batch", range=(1, 4096))

    def __post_init__(self) -> None:
        validate_fields(self)  # configs built in Python are checked as config files are
        if self.format == "tensorrt" and self.target != "tensorrt":
            raise ConfigError(f"format 'tensorrt' builds from the TensorRT-target graph; got target '{self.target}'")


@dataclass(frozen=True)
class BenchConfig:
    """``qfair bench RUN_DIR``."""

    batches: tuple[int, ...] = cfg_field((1, 16, 64), help="batch sizes (the first is reported as latency)",
                                         range=(1, 65536))
    warmup: int = cfg_field(2, help="untimed runs before timing", range=(0, 1000))
    repeats: int = cfg_field(5, help="timed runs per setting (the median is reported)", range=(1, 10000))
    threads: Optional[int] = cfg_field(None, help="CPU threads for torch and ONNX Runtime (default: all cores)",
                                       range=(1, 1024))
    parity: Optional[str] = cfg_field(None, help="benchmark spec for the int8 export's parity check")

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.batches:
            raise ConfigError("key 'batches': got an empty list; give at least one batch size, e.g. --batches 1 16")
