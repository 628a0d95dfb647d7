"""TensorRT engines: a clear error where TensorRT or a GPU is missing; a real build where both exist."""
import pytest

from qfair.export.tensorrt import tensorrt_status
from qfair.utils.errors import MissingDependencyError

TRT_OK, TRT_WHY = tensorrt_status()


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are present")
def test_clear_error_without_tensorrt(tmp_path):
    from qfair.export import build_engine

    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        build_engine(tmp_path / "m.onnx")
    from qfair.eval.backends import get_backend_class

    with pytest.raises(MissingDependencyError):
        get_backend_class("tensorrt")(tmp_path / "m.engine")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a GPU: {TRT_WHY}")
def test_engine_matches_onnxruntime(tmp_path, deploy8, parity_images):  # pragma: no cover - GPU only
    import numpy as np

    from qfair.export import build_engine, export_onnx
    from qfair.export.parity import cosines, ort_session, run_onnx
    from qfair.export.tensorrt import EngineRunner

    onnx_path = export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", parity_data=parity_images)
    engine = build_engine(onnx_path, max_batch=8)
    assert engine.exists() and engine.with_suffix(".timing.cache").exists()
    got = EngineRunner(engine)(parity_images[:5])
    (want,) = run_onnx(ort_session(onnx_path), parity_images[:5])
    assert got.shape == want.shape and np.mean(cosines(got, want)) > 0.999


class _FakeTensorRT:
    """Records what build_engine asks of TensorRT (the real one needs a GPU): enough of the Python API
    (Builder, network, OnnxParser, builder config, profile, timing cache) for a build to run through."""

    def __init__(self, strongly_typed: bool = True, explicit_batch: bool = True, precision_flags: bool = True):
        from types import SimpleNamespace

        creation = {"STRONGLY_TYPED": 0} if strongly_typed else {}
        if explicit_batch:
            creation["EXPLICIT_BATCH"] = 5
        self.NetworkDefinitionCreationFlag = SimpleNamespace(**creation)
        self.BuilderFlag = SimpleNamespace(**({"FP16": "FP16", "INT8": "INT8"} if precision_flags else {}))
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.calls: dict = {"flags": [], "network": None, "shapes": None}
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Config:
            def set_flag(self, flag):
                fake.calls["flags"].append(flag)

            def set_memory_pool_limit(self, pool, size):
                pass

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, data):
                return SimpleNamespace(serialize=lambda: b"cache")

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["shapes"] = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["network"] = flags
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return memoryview(b"engine")

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser


def _build_with(monkeypatch, tmp_path, fake, **kw):
    import qfair.export.tensorrt as trt_mod

    monkeypatch.setattr(trt_mod, "_require_tensorrt", lambda: fake)
    (tmp_path / "m.onnx").write_bytes(b"graph")
    return trt_mod.build_engine(tmp_path / "m.onnx", max_batch=8, **kw)


def test_engine_is_strongly_typed_without_precision_flags(tmp_path, monkeypatch):
    """TensorRT 9+ (strong typing): the engine keeps the graph's types, so its float layers compute in float32
    as the parity-checked graph does; precision flags (INT8, FP16) are not set (an error on such a network).
    Was: weakly typed with INT8 + FP16 flags, so PReLU / Add / BatchNorm ran in float16."""
    fake = _FakeTensorRT()
    engine = _build_with(monkeypatch, tmp_path, fake)
    assert fake.calls["network"] == (1 << 0) | (1 << 5) and fake.calls["flags"] == []
    assert fake.calls["shapes"] == ("input", (1, 3, 112, 112), (8, 3, 112, 112), (8, 3, 112, 112))
    assert engine.read_bytes() == b"engine" and engine.with_suffix(".timing.cache").read_bytes() == b"cache"


def test_engine_weak_typing_for_old_tensorrt_or_fp16(tmp_path, monkeypatch):
    fake = _FakeTensorRT(strongly_typed=False)  # TensorRT 8: Q/DQ networks need the INT8 flag
    _build_with(monkeypatch, tmp_path, fake)
    assert fake.calls["network"] == 1 << 5 and fake.calls["flags"] == ["INT8"]
    fake = _FakeTensorRT()
    _build_with(monkeypatch, tmp_path, fake, fp16=True)  # asked for: weakly typed, float16 float layers
    assert fake.calls["network"] == 1 << 5 and fake.calls["flags"] == ["INT8", "FP16"]
    from qfair.utils.errors import ExportError

    with pytest.raises(ExportError, match="fp16=False"):  # TensorRT 11: no weak typing to ask for
        _build_with(monkeypatch, tmp_path, _FakeTensorRT(explicit_batch=False, precision_flags=False), fp16=True)
