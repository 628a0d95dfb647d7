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
    def corrupt(proto):
        init = {t.name: t for t in proto.graph.initializer}
        conv2 = next(n for n in proto.graph.node if n.name == "conv2")
        dq = next(n for n in proto.graph.node if n.output[0] == conv2.input[1])
        codes = onnx.numpy_helper.to_array(init[dq.input[0]])
        init[dq.input[0]].CopyFrom(onnx.numpy_helper.from_array(-codes, dq.input[0]))

    _tensorrt_graph_edited(monkeypatch, corrupt, before_build=True)
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
    for gate in (0.0, -1, 1.5, float("nan")):  # 0 or below passed every graph; above 1 failed every one
        with pytest.raises(ExportError, match="cosine_gate .* in \\(0, 1\\]"):
            export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", cosine_gate=gate)
    with pytest.raises(ExportError, match="n_parity 0: .* 2 or more"):
        export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", n_parity=0)
    with pytest.raises(ExportError, match="parity_data: an image tensor must be \\(N, 3, 112, 112\\).*"
                                          "\\(4, 3, 64, 64\\)"):
        export_onnx(deploy8, "onnxruntime", out=tmp_path / "m.onnx", parity_data=torch.zeros(4, 3, 64, 64))
    with pytest.raises(QfairError, match="export needs a quantized model \\(nn.Module\\), a run folder or a "
                                         "checkpoint path, got int"):
        export_onnx(42, "onnxruntime", out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("qrange", [(-128, 127), (-32, 31), (0, 63)])
def test_half_activations_quantize_in_float32(qrange):
    """A float16 activation reaching the fake-quant op: torch quantizes it in float32 and casts back; the
    graph did Q/DQ with the float16 x and a float32 scale (an invalid graph: onnx.checker and ONNX Runtime
    refuse it). Compared with torch and with codes computed by hand."""
    from qfair.export.onnx_graph import torch_to_onnx
    from qfair.quant.fake_quant import fake_quant

    lo, hi = qrange
    zp = 0.0 if lo < 0 else 20.0

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor(0.02, dtype=torch.float16))  # as model.half() leaves it
            self.register_buffer("zp", torch.tensor(zp))

        def forward(self, x):
            return fake_quant(x.half(), self.scale, self.zp, lo, hi, -1).float()

    m = Half()
    proto = torch_to_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    x = torch.linspace(-2, 2, 2 * 3 * 112 * 112).reshape(2, 3, 112, 112)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    s = np.float32(np.float16(0.02))
    xh = x.numpy().astype(np.float16).astype(np.float32)
    want = ((np.clip(np.rint(xh / s) + zp, lo, hi) - zp) * s).astype(np.float16).astype(np.float32)
    assert np.array_equal(got, want) and np.array_equal(m(x).numpy(), want)


def test_float16_model_exports_in_float32(tmp_path, deploy8, parity_images):
    """model.half() failed inside the exporter with a raw dtype RuntimeError; now the graph is the float32
    copy (float16 weights and scales are exact in float32), and the report says so."""
    import copy

    half = copy.deepcopy(deploy8).half()
    path = export_onnx(half, "tensorrt", out=tmp_path / "h.onnx", parity_data=parity_images)
    rep = _report(path)
    assert rep["parity"]["passed"] and any("float16" in n for n in rep["notes"])
    got = _session(path).run(None, {"input": parity_images[:4].numpy()})[0]
    with torch.no_grad():
        want = copy.deepcopy(half).float()(parity_images[:4]).numpy()
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999
    assert next(half.parameters()).dtype == torch.float16  # the caller's model is left as it was


@pytest.mark.parametrize("skip", [("stem",), ("fc",)])
def test_float_layer_exports_for_tensorrt(tmp_path, parity_images, skip):
    """A layer the quantized model keeps float (--skip: the input layer, the embedding head) has no Q/DQ in
    the graph: TensorRT runs it in float, as the model does. The validator refused such a model for
    TensorRT ("its input has no DequantizeLinear"); now the layer is listed as float and the rest is
    checked as before."""
    from .conftest import images, make_float

    from qfair.quant import QuantConfig, quantize

    cfg = QuantConfig(bits=8, recipe="deploy", calib_size=16, calib_batch_size=16, skip=skip)
    model = quantize(make_float(), cfg, [images(16, seed=2)])
    path = export_onnx(model, "tensorrt", out=tmp_path / "s.onnx", parity_data=parity_images[:8])
    rep = _report(path)
    assert rep["float_layers"] == list(skip) and skip[0] not in rep["int8_layers"] and rep["parity"]["passed"]
    graph = onnx.load(str(path))
    layer = next(n for n in graph.graph.node if n.name == skip[0])
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in layer.input[:2])  # really float in the graph
    bad = validate_onnx(graph, "tensorrt")  # without the model's float layers: still a violation
    assert [v.rule for v in bad] == ["qdq-inputs", "qdq-inputs"] and validate_onnx(graph, "tensorrt", skip) == []


def test_learnable_scale_model_exports_with_a_dynamic_batch(tmp_path, deploy8, parity_images):
    """A QAT run (learnable LSQ scales, as load_quantized restores them): LSQ's gradient-scaling factor uses
    x.numel(), and the exporter pinned the batch to 2 (ONNX Runtime failed with a raw Reshape error at the
    parity check). The frozen copy now holds plain scales: same forward values, dynamic batch."""
    import copy

    from qfair.quant import iter_quantizers

    qat = copy.deepcopy(deploy8)
    for _, q in iter_quantizers(qat):
        q.enable_lsq()
    path = export_onnx(qat, "tensorrt", out=tmp_path / "qat.onnx", parity_data=parity_images[:8])
    assert validate_onnx(str(path), "tensorrt") == [] and _report(path)["parity"]["passed"]
    sess = _session(path)
    with torch.no_grad():
        for batch in (1, 5):
            got = sess.run(None, {"input": parity_images[:batch].numpy()})[0]
            want = qat(parity_images[:batch]).numpy()
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-4)
    assert all(q.lsq for _, q in iter_quantizers(qat))  # the caller's model keeps its learnable scales


def test_batch_pinned_by_the_model_is_refused(tmp_path):
    """A forward that computes with the batch size as a number exports for that batch only; the graph's
    input was relabelled dynamic anyway. Now a clear error says what to change."""
    from qfair.export.onnx_graph import torch_to_onnx

    class Pinned(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, -1)[:, :16]

    with pytest.raises(ExportError, match="fixed the batch size.*to 2.*x.flatten\\(1\\)"):
        torch_to_onnx(Pinned())


def test_graph_that_onnxruntime_cannot_run_gives_an_export_error(tmp_path, deploy8, parity_images, monkeypatch):
    """ONNX Runtime failing while the parity check runs the graph surfaced as its own raw exception type
    (not a qfair error, no hint); now an ExportError names the step, and nothing is written."""
    from onnx import helper, numpy_helper

    def broken(proto):  # the embedding reshaped to 7 rows: fails at run time for any batch of 32
        out = proto.graph.output[0].name
        last = next(n for n in proto.graph.node if out in n.output)
        last.output[list(last.output).index(out)] = "pre"
        proto.graph.initializer.append(numpy_helper.from_array(np.array([7, -1], np.int64), "rows"))
        proto.graph.node.append(helper.make_node("Reshape", ["pre", "rows"], [out], name="bad_reshape"))

    _tensorrt_graph_edited(monkeypatch, broken)
    with pytest.raises(ExportError, match="the parity check .* failed: .*Reshape.*Nothing was written"):
        export_onnx(deploy8, "tensorrt", out=tmp_path / "bad.onnx", parity_data=parity_images)
    assert list(tmp_path.iterdir()) == []


def test_wrong_six_bit_clip_range_fails_parity(tmp_path, deploy6, parity_images, monkeypatch):
    """A 6-bit graph whose activations saturate at the int8 range (the range Clip before each Q removed)
    differs from the model only where activations pass the 6-bit range: the stress inputs. Their cosine
    (about 0.986 here) hid in the overall mean (0.9965 >= the 6-bit gate 0.995) and the graph shipped."""
    def no_range_clip(proto):
        for clip in [n for n in proto.graph.node if n.op_type == "Clip"]:
            for node in proto.graph.node:
                node.input[:] = [clip.input[0] if i == clip.output[0] else i for i in node.input]
            proto.graph.node.remove(clip)

    _tensorrt_graph_edited(monkeypatch, no_range_clip)
    with pytest.raises(ExportError, match="stress inputs 0\\.9[0-8].*wrong range clip"):
        export_onnx(deploy6, "tensorrt", out=tmp_path / "w.onnx", parity_data=parity_images)
    assert list(tmp_path.iterdir()) == []


def test_folder_without_a_model_says_what_to_pass(tmp_path):
    from qfair.export import load_for_export

    with pytest.raises(QfairError, match="no quant.json and no model.pt.*qfair quantize.*qfair qat"):
        load_for_export(tmp_path)


def _tensorrt_graph_edited(monkeypatch, edit, before_build=False):
    """Make the tensorrt target pass its graph through ``edit(proto)`` (a deliberately broken export for the
    checks to catch): after the target's own build, or before it with ``before_build``."""
    from qfair.export import targets

    spec = targets.TARGETS.get("tensorrt")

    def build(proto, ctx):
        if before_build:
            edit(proto)
            return spec.build(proto, ctx)
        rep = spec.build(proto, ctx)
        edit(proto)
        return rep

    monkeypatch.setitem(targets.TARGETS._items, "tensorrt", targets.Target("tensorrt", "tensorrt", spec.check, build))
