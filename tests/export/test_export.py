"""export_onnx end to end on a tiny model quantized by the real recipes: graph contract, TensorRT
rules, 6-bit exactness against ONNX Runtime, ONNX Runtime fusion, and the bad inputs."""
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qfair.export import export_onnx, validate_onnx  # noqa: E402
from qfair.utils.errors import ExportError, QfairError  # noqa: E402


def _report(path):
    return json.loads(path.with_name(path.stem + ".export.json").read_text())


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_tensorrt_graph_contract(tmp_path, deploy8, parity_images):
    path = export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", parity_data=parity_images)
    model = onnx.load(str(path))
    assert validate_onnx(model, "tensorrt") == []
    assert model.ir_version <= 10 and any(o.domain == "" and o.version >= 17 for o in model.opset_import)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "embedding"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    sess = _session(path)
    for batch in (1, 3):  # dynamic batch
        assert sess.run(None, {"input": parity_images[:batch].numpy()})[0].shape == (batch, 16)
    rep = _report(path)
    assert rep["parity"]["passed"] and rep["parity"]["cosine_mean"] >= 0.999 and rep["bits"] == 8


def test_six_bit_is_exact_in_onnxruntime(tmp_path, deploy6, parity_images):
    """Weights are 6-bit codes in int8; activations beyond the 6-bit range saturate like the torch model."""
    path = export_onnx(deploy6, "tensorrt", out=tmp_path / "m6.onnx", parity_data=parity_images)
    model = onnx.load(str(path))
    codes = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
             and len(t.dims) > 1]
    assert codes and all(c.min() >= -32 and c.max() <= 31 for c in codes)
    assert any(n.op_type == "Clip" for n in model.graph.node)
    # The stem alone: torch fake-quant vs ONNX Runtime, on inputs 3x beyond the calibrated range.
    from qfair.export.onnx_graph import freeze_copy, torch_to_onnx

    stem = freeze_copy(deploy6).stem
    wrapped = torch.nn.Sequential(stem)
    proto = torch_to_onnx(wrapped)
    x = parity_images[:4] * 3
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = wrapped(x).numpy()
    assert np.allclose(got, want, atol=1e-5)
    assert _report(path)["parity"]["clipped_fraction"] > 0  # the stress inputs really saturated


def test_asymmetric_model_refused_for_tensorrt(tmp_path, quantface8, parity_images):
    with pytest.raises(ExportError, match="recipe deploy"):
        export_onnx(quantface8, "tensorrt", out=tmp_path / "q.onnx", parity_data=parity_images)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("fixture", ["deploy8", "quantface8"])
def test_onnxruntime_target_fuses_integer_kernels(tmp_path, request, fixture, parity_images):
    model = request.getfixturevalue(fixture)
    path = export_onnx(model, "onnxruntime", out=tmp_path / "o.onnx", parity_data=parity_images, requant=True)
    assert validate_onnx(str(path), "onnxruntime") == []
    rep = _report(path)
    quantized = {"deploy8": {"stem", "conv1", "conv2", "dw", "fc"}, "quantface8": {"conv1", "conv2", "dw"}}
    assert rep["keep_float"] == "auto" and set(rep["per_layer_ms"]) == quantized[fixture]
    assert sorted(rep["float_layers"] + rep["int8_layers"]) == sorted(rep["per_layer_ms"])
    assert all(n not in rep["float_layers"] or t["float"] < t["int8"] for n, t in rep["per_layer_ms"].items())
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in ops or not rep["int8_layers"]  # ONNX Runtime really runs integer convolutions
    assert "PRelu" not in ops  # rewritten to Mul + Max
    assert rep["parity"]["passed"]
    if rep["output_quant"]:  # conv outputs re-quantized: also compared with the evaluated model
        assert rep["parity"]["evaluated_cosine_mean"] > 0.99


def test_keep_float_options(tmp_path, deploy8, parity_images):
    path = export_onnx(deploy8, "onnxruntime", out=tmp_path / "n.onnx", parity_data=parity_images, keep_float="none",
                       requant=True)
    rep = _report(path)
    assert rep["float_layers"] == [] and len(rep["int8_layers"]) == 5
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 4 and "QGemm" in ops
    path = export_onnx(deploy8, "onnxruntime", out=tmp_path / "d.onnx", parity_data=parity_images,
                       keep_float="depthwise", requant=True)
    assert _report(path)["float_layers"] == ["dw"]


def test_integer_layout_is_gated_against_the_evaluated_model(tmp_path, deploy8, parity_images):
    """The integer layout re-quantizes conv outputs: it ships only if its embeddings stay within the
    cosine gate of the evaluated fake-quant model (or with requant=True)."""
    fast = _report(export_onnx(deploy8, "onnxruntime", out=tmp_path / "r.onnx", parity_data=parity_images,
                               keep_float="none", requant=True))
    ev = fast["parity"]["evaluated_cosine_mean"]
    assert fast["parity"]["cosine_mean"] > 0.99999 and 0.9 < ev < 0.99999  # exact vs its twin, not vs the model
    strict = (ev + 1) / 2  # between the evaluated cosine and the twin's
    with pytest.raises(ExportError, match="against the evaluated model.*--requant"):
        export_onnx(deploy8, "onnxruntime", out=tmp_path / "n.onnx", parity_data=parity_images, keep_float="none",
                    cosine_gate=strict)
    assert not (tmp_path / "n.onnx").exists()
    rep = _report(export_onnx(deploy8, "onnxruntime", out=tmp_path / "a.onnx", parity_data=parity_images,
                              cosine_gate=strict))
    # auto ships either a layout within the gate of the evaluated model or (the fallback) the exact one
    if rep["int8_layers"]:
        assert rep["parity"]["evaluated_cosine_mean"] >= strict
    else:
        assert rep["parity"]["cosine_mean"] > 0.99999 and rep["parity"]["evaluated_cosine_mean"] is None
    loose = _report(export_onnx(deploy8, "onnxruntime", out=tmp_path / "l.onnx", parity_data=parity_images,
                                keep_float="none", cosine_gate=ev - 1e-4))
    assert len(loose["int8_layers"]) == 5 and loose["parity"]["passed"]


def test_float_model_exports_as_float(tmp_path, tiny_float, parity_images):
    path = export_onnx(tiny_float, "tensorrt", out=tmp_path / "f.onnx", parity_data=parity_images)
    rep = _report(path)
    assert rep["quantized"] is False and "not quantized" in rep["notes"][0]
    assert not any(n.op_type.endswith("Linear") for n in onnx.load(str(path)).graph.node)


def test_bad_inputs(tmp_path, deploy8, parity_images, monkeypatch):
    with pytest.raises(QfairError, match="onnxruntime"):
        export_onnx(deploy8, "coreml", out=tmp_path / "x.onnx")
    with pytest.raises(QfairError, match="does not exist"):
        export_onnx(deploy8, "tensorrt", out=tmp_path / "missing" / "x.onnx")
    import qfair.utils.io as io

    monkeypatch.setattr(io.os, "access", lambda *a: False)  # root ignores chmod, so fake a read-only folder
    with pytest.raises(QfairError, match="not writable"):
        export_onnx(deploy8, "tensorrt", out=tmp_path / "x.onnx")


def test_failed_parity_writes_nothing_and_names_the_layer(tmp_path, deploy8, parity_images, monkeypatch):
    """Corrupt conv2's weight codes in the graph: parity fails and points after conv2."""
    from qfair.export import targets

    spec = targets.TARGETS.get("tensorrt")

    def corrupt(proto, ctx):
        init = {t.name: t for t in proto.graph.initializer}
        conv2 = next(n for n in proto.graph.node if n.name == "conv2")
        dq = next(n for n in proto.graph.node if n.output[0] == conv2.input[1])
        codes = onnx.numpy_helper.to_array(init[dq.input[0]])
        init[dq.input[0]].CopyFrom(onnx.numpy_helper.from_array(-codes, dq.input[0]))
        return spec.build(proto, ctx)

    monkeypatch.setitem(targets.TARGETS._items, "tensorrt", targets.Target("tensorrt", "tensorrt", spec.check,
                                                                          corrupt))
    with pytest.raises(ExportError, match="parity check failed.*cosine") as err:
        export_onnx(deploy8, "tensorrt", out=tmp_path / "bad.onnx", parity_data=parity_images)
    assert "dw.input_quantizer" in str(err.value)  # the first quantizer after conv2
    assert list(tmp_path.iterdir()) == []


def test_export_records_its_model_pt_and_evaluate_checks_it(tmp_path, deploy8, parity_images, monkeypatch):
    """Exported into its run folder, the report records model.pt's sha256; a re-quantized model.pt then
    makes the graph stale, and the check refuses it. A graph written elsewhere records nothing."""
    import qfair.export.api as api
    from qfair.export.provenance import check_export_source, file_sha256

    (tmp_path / "model.pt").write_bytes(b"weights")
    monkeypatch.setattr(api, "load_for_export", lambda src: (deploy8, tmp_path))
    path = export_onnx(tmp_path, "tensorrt", parity_data=parity_images)
    assert _report(path)["source_model"] == {"file": "model.pt", "sha256": file_sha256(tmp_path / "model.pt")}
    check_export_source(path)
    (tmp_path / "model.pt").write_bytes(b"re-quantized weights")
    with pytest.raises(QfairError, match="model.onnx was exported from a different model.pt.*qfair export"):
        check_export_source(path)
    (tmp_path / "elsewhere").mkdir()
    other = export_onnx(tmp_path, "tensorrt", out=tmp_path / "elsewhere" / "m.onnx", parity_data=parity_images)
    assert "source_model" not in _report(other)


def test_accuracy_gate_ignores_rounding_at_chance_level():
    """Scores packed together (a barely trained model) and moved only by float rounding: each score
    vector's own best threshold overfits its noise (the accuracies differed by pp); now they are equal."""
    from qfair.export.parity import best_threshold_accuracy, gate_accuracies

    rng = np.random.default_rng(1)
    issame = np.arange(32) % 2 == 0
    ref = 0.5 + rng.normal(0, 1e-7, 32)
    out = ref + rng.normal(0, 1e-7, 32)
    assert abs(best_threshold_accuracy(ref, issame) - best_threshold_accuracy(out, issame)) > 1  # the old gate
    acc_ref, acc_out = gate_accuracies(ref, out, issame)
    assert acc_ref == acc_out == best_threshold_accuracy(ref, issame)


def test_accuracy_gate_still_sees_moved_scores():
    from qfair.export.parity import gate_accuracies

    issame = np.arange(40) % 2 == 0
    ref = np.where(issame, 0.6, 0.2) + np.linspace(0, 0.01, 40)  # separable: 100%
    out = ref + 1e-7
    out[:8:2] = 0.1  # four genuine pairs fall below every impostor: a real mismatch
    assert gate_accuracies(ref, out, issame) == (100.0, 90.0)


def test_graph_evaluated_on_its_own_keeps_its_bits(tmp_path, deploy8, parity_images):
    """An int8 graph passed to evaluate() as a file was labelled FP32 / not quantized (so compare() could
    take it for the float reference); the export report now carries the bits evaluate reads."""
    from qfair.eval import evaluate

    path = export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", parity_data=parity_images)
    rep = _report(path)
    assert (rep["wbits"], rep["abits"], rep["recipe"]) == (8, 8, "deploy")
    res = evaluate(path, "builtin:tiny", n_bootstrap=0)
    assert res.meta["quantized"] is True and res.meta["bits"] == "W8A8" and res.meta["recipe"] == "deploy"


def test_bad_options_fail_before_the_export_and_logging_is_left_alone(tmp_path, deploy8, monkeypatch):
    import logging

    import qfair.export.onnx_graph as og

    real = og.torch_to_onnx
    log = logging.getLogger("torch.onnx")
    log.setLevel(logging.INFO)
    real(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert log.level == logging.INFO  # was left at ERROR for the rest of the process
    monkeypatch.setattr(og, "torch_to_onnx", lambda *a, **k: pytest.fail("exported before checking the options"))
    with pytest.raises(ExportError, match="unknown keep_float option 'nope'"):
        export_onnx(deploy8, "onnxruntime", out=tmp_path / "m.onnx", keep_float="nope")
    with pytest.raises(ExportError, match="parity_data: an image tensor must be \\(N, 3, 112, 112\\).*"
                                          "\\(4, 3, 64, 64\\)"):
        export_onnx(deploy8, "onnxruntime", out=tmp_path / "m.onnx", parity_data=torch.zeros(4, 3, 64, 64))
    with pytest.raises(QfairError, match="export needs a quantized model \\(nn.Module\\), a run folder or a "
                                         "checkpoint path, got int"):
        export_onnx(42, "onnxruntime", out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
