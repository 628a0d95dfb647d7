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
