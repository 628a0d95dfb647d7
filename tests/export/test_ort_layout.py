"""The exported graphs compute what the fake-quant model computes in ONNX Runtime with every graph
optimisation on: float-kept layers store int8 weights, conv biases are not re-quantized behind our
back, 6-bit clips survive the fusions, the integer layout's int32 biases are simulated by its torch
twin, and the written file is compacted without changing a number."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qfair.export import export_onnx  # noqa: E402
from qfair.export.graph import bias_as_add, compact_graph  # noqa: E402
from qfair.utils.errors import ExportError  # noqa: E402


def _report(path):
    return json.loads(path.with_name(path.stem + ".export.json").read_text())


def _optimized_ops(path_or_proto, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    data = path_or_proto.SerializeToString() if hasattr(path_or_proto, "SerializeToString") else str(path_or_proto)
    ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def _run(model, x, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("keep_float", ["depthwise", "all"])
def test_float_layers_store_int8_weights(tmp_path, deploy8, parity_images, keep_float):
    path = export_onnx(deploy8, "onnxruntime", out=tmp_path / "f.onnx", parity_data=parity_images,
                       keep_float=keep_float, requant=True)
    rep = _report(path)
    assert rep["float_layers"] == (["dw"] if keep_float == "depthwise" else ["stem", "conv1", "conv2", "dw", "fc"])
    weights = [t for t in onnx.load(str(path)).graph.initializer if sum(d > 1 for d in t.dims) >= 2]  # not (1, C, 1, 1)
    assert len(weights) == 5 and all(t.data_type == TensorProto.INT8 for t in weights)  # one byte per weight
    assert rep["parity"]["passed"]
    if keep_float == "all":  # float kernels on the model's own weights and biases: the fake-quant model itself
        assert rep["parity"]["evaluated_cosine_mean"] is None and rep["parity"]["cosine_mean"] > 0.99999
    # ONNX Runtime folds Cast -> Mul into float weights when the session starts
    assert "Cast" not in _optimized_ops(path, tmp_path)


@pytest.mark.parametrize("target,keep_float", [("tensorrt", "auto"), ("onnxruntime", "none"),
                                               ("onnxruntime", "all")])
def test_six_bit_parity_beyond_the_range(tmp_path, deploy6, parity_images, target, keep_float):
    """Inputs 3x past the calibrated range saturate 6-bit quantizers; the graph still matches."""
    x = parity_images * 3
    path = export_onnx(deploy6, target, out=tmp_path / "m6.onnx", parity_data=x, keep_float=keep_float,
                       requant=True)  # the integer layout's twin gates; the evaluated-model gate is tested elsewhere
    rep = _report(path)
    par = rep["parity"]
    # against the fake-quant model itself (tensorrt, onnxruntime "all") or its twin with the integer
    # layout's uint8 conv outputs and int32 biases (onnxruntime "none")
    assert par["passed"] and par["cosine_mean"] > 0.9999 and par["cosine_min"] > 0.999
    assert par["clipped_fraction"] > 0
    if keep_float == "none":
        assert rep["bias_shift"] and all(v > 0 for v in rep["bias_shift"].values())
    from qfair.export.onnx_graph import freeze_copy
    from qfair.export.parity import clipped_fraction

    assert clipped_fraction(freeze_copy(deploy6), x) > 0.01  # the parity images themselves saturate
    assert "Clip" in _optimized_ops(path, tmp_path)  # the 6-bit clip survives ONNX Runtime's fusions


def _conv_to_quantizer(bias):
    """DQ(x) -> Conv(DQ(w), bias) -> Clip -> Q -> DQ at a coarse 6-bit scale, with a bias off the
    int32 grid s_x * s_w."""
    rng = np.random.default_rng(0)
    c = 4
    init = [numpy_helper.from_array(rng.integers(-31, 32, (c, c, 1, 1)).astype(np.int8), "w"),
            numpy_helper.from_array(np.full(c, 0.02, np.float32), "ws"),
            numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
            numpy_helper.from_array(np.float32(0.4), "s"), numpy_helper.from_array(np.int8(0), "z"),
            numpy_helper.from_array(np.float32(-12.8), "lo"), numpy_helper.from_array(np.float32(12.4), "hi"),
            numpy_helper.from_array(bias.astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv"),
             helper.make_node("Clip", ["y", "lo", "hi"], ["yc"]),
             helper.make_node("QuantizeLinear", ["yc", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, c, 6, 6])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_conv_bias_stays_float_in_onnxruntime():
    """ONNX Runtime (1.31) rounds the float bias of DQ -> Conv -> (Clip ->) Q to int32 at s_x * s_w
    (WeightBiasQuantization, on at every optimisation level) -- the 6-bit export's parity failure.
    With the bias moved into an Add, every optimisation level computes the same numbers."""
    rng = np.random.default_rng(1)
    model = _conv_to_quantizer(rng.uniform(-1, 1, 4) + 0.0037)
    x = (rng.standard_normal((64, 4, 6, 6)) * 4).astype(np.float32)
    assert bias_as_add(model.graph) == 1
    assert len(next(n for n in model.graph.node if n.op_type == "Conv").input) == 2
    assert np.array_equal(_run(model, x), _run(model, x, optimize=False))


def test_tensorrt_graph_has_no_conv_bias(tmp_path, deploy6, parity_images):
    path = export_onnx(deploy6, "tensorrt", out=tmp_path / "t.onnx", parity_data=parity_images)
    model = onnx.load(str(path))
    assert all(len(n.input) == 2 for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
    assert _report(path)["float_bias_adds"] > 0


def test_compact_graph_changes_no_number(deploy8, parity_images):
    from qfair.export.onnx_graph import freeze_copy, torch_to_onnx
    from qfair.export.targets import TARGETS, ExportContext

    frozen = freeze_copy(deploy8)
    proto = torch_to_onnx(frozen)
    TARGETS.get("onnxruntime").build(proto, ExportContext(frozen, True, 8, parity_images, keep_float="none"))
    x = parity_images[:4].numpy()
    want, size = _run(proto, x), proto.ByteSize()
    saved = compact_graph(proto.graph)
    assert saved > 0 and proto.ByteSize() == size - saved
    assert np.array_equal(_run(proto, x), want)
    assert {"stem", "conv1", "conv2", "dw", "fc"} <= {n.name for n in proto.graph.node}  # layer names stay


def test_auto_falls_back_to_the_exact_layout(tmp_path, deploy6, parity_images, monkeypatch):
    """When the integer layout fails parity (here: forced), "auto" ships the exact float-kernel layout."""
    from qfair.export import parity

    real = parity.parity_check

    def integer_layout_fails(model, proto, images, **kw):
        rep = real(model, proto, images, **kw)
        if kw.get("evaluated") is not None:  # the twin-gated integer layout
            rep.passed, rep.reasons = False, ["forced by the test"]
        return rep

    monkeypatch.setattr(parity, "parity_check", integer_layout_fails)
    path = export_onnx(deploy6, "onnxruntime", out=tmp_path / "a.onnx", parity_data=parity_images,
                       keep_float="auto")
    rep = _report(path)
    assert rep["keep_float"] == "all" and rep["int8_layers"] == [] and rep["parity"]["passed"]
    assert rep["integer_layout_parity"]["reasons"] == ["forced by the test"]
    assert any("failed parity" in n for n in rep["notes"])
    with pytest.raises(ExportError, match="forced by the test"):  # an explicit choice is not overridden
        export_onnx(deploy6, "onnxruntime", out=tmp_path / "n.onnx", parity_data=parity_images, keep_float="none")
