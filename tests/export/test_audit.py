"""Regression tests from the export audit: the packed export's report, opset 17, onnx.checker and other
batch sizes, graph + report written as one step, the compacted file checked against the parity-checked
graph, clear errors for checkpoint files and float models, TensorRT profile options."""
import copy
import json
import os
import signal

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from qfair.cli import main  # noqa: E402
from qfair.export import export_onnx, export_packed  # noqa: E402
from qfair.export.provenance import (  # noqa: E402
    _hold_interrupt,
    export_report_path,
    exports_in,
    file_sha256,
    write_with_report,
)
from qfair.utils.errors import ExportError  # noqa: E402

from .conftest import TinyFace  # noqa: E402


@pytest.fixture()
def run_dir(tmp_path, deploy6, monkeypatch):
    from qfair.models import MODELS
    from qfair.quant import save_quantized

    monkeypatch.setitem(MODELS._items, "tinyface_test", lambda **kw: TinyFace())
    save_quantized(deploy6, tmp_path / "run", arch={"name": "tinyface_test", "kwargs": {}})
    return tmp_path / "run"


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_packed_export_writes_its_own_report(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "packed"]) == 0
    qpk = run_dir / "model.qpk"
    rep_path = export_report_path(qpk)
    assert rep_path.name == "model.qpk.export.json"  # not model.export.json: that belongs to model.onnx
    assert not (run_dir / "model.export.json").exists()
    rep = json.loads(rep_path.read_text())
    assert rep["format"] == "packed" and rep["bits"] == 6 and rep["wbits"] == 6 and rep["abits"] == 6
    assert rep["recipe"] == "deploy" and rep["quantized"] and rep["exact"] and rep["max_abs_diff"] == 0.0
    assert rep["bytes"] == qpk.stat().st_size
    assert rep["source_model"]["sha256"] == file_sha256(run_dir / "model.pt")
    assert "model.qpk.export.json" in capsys.readouterr().out
    # an ONNX export beside it keeps its own report; quantize --overwrite finds both pairs
    assert main(["export", str(run_dir), "--target", "tensorrt", "--n-parity", "16"]) == 0
    assert json.loads((run_dir / "model.export.json").read_text())["format"] == "onnx"
    assert json.loads(rep_path.read_text())["format"] == "packed"
    found = {p.name for p in exports_in(run_dir)}
    assert {"model.qpk", "model.qpk.export.json", "model.onnx", "model.export.json"} <= found


def test_packed_export_under_another_name_is_found_for_deletion(run_dir):
    assert main(["export", str(run_dir), "--format", "packed", "--out", str(run_dir / "w6.qpk")]) == 0
    assert {"w6.qpk", "w6.qpk.export.json"} <= {p.name for p in exports_in(run_dir)}


def test_packed_export_refuses_a_float_model(tmp_path, tiny_float):
    with pytest.raises(ExportError, match="not quantized"):
        export_packed(tiny_float, tmp_path / "f.qpk")
    assert not list(tmp_path.iterdir())


def test_packed_export_skips_switched_off_weight_quantizers(tmp_path, deploy8):
    from qfair.export.packed import load_packed, weight_specs_from_model
    from qfair.quant import iter_quantizers

    model = copy.deepcopy(deploy8)
    dict(iter_quantizers(model))["stem.weight_quantizer"].fake_quant_enabled = False  # stem runs on float weights
    assert "stem.weight" not in weight_specs_from_model(model)
    path = export_packed(model, tmp_path / "m.qpk")
    state, _ = load_packed(path)
    assert torch.equal(state["stem.weight"], model.stem.weight.detach())
    assert json.loads(export_report_path(path).read_text())["exact"]


def test_checkpoint_file_without_out_names_the_flag(tmp_path, capsys):
    ckpt = tmp_path / "float.pt"
    torch.save(TinyFace().state_dict(), ckpt)
    for fmt, suffix in (("onnx", ".onnx"), ("packed", ".qpk")):
        assert main(["export", str(ckpt), "--format", fmt]) == 2
        err = _err(capsys)
        assert f"--out FILE{suffix}" in err and "not a run folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.pt"]


def test_opset_17_keeps_layer_names_for_onnxruntime(tmp_path, deploy8, parity_images):
    import onnx

    path = export_onnx(deploy8, "onnxruntime", out=tmp_path / "m.onnx", parity_data=parity_images, opset=17,
                       keep_float="none", requant=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert {"stem", "conv1", "fc"} <= {n.name for n in model.graph.node}
    rep = json.loads(export_report_path(path).read_text())
    assert rep["opset"] == 17 and "stem" in rep["int8_layers"]


@pytest.mark.parametrize("target,fixture", [("tensorrt", "deploy6"), ("onnxruntime", "deploy8")])
def test_written_graph_passes_checker_and_runs_any_batch(tmp_path, request, target, fixture, parity_images):
    import onnx

    from qfair.export.parity import cosines, ort_session, run_onnx, torch_embed

    model = request.getfixturevalue(fixture)
    path = export_onnx(model, target, out=tmp_path / "m.onnx", parity_data=parity_images)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort_session(path)
    x = parity_images[:7]
    (whole,) = run_onnx(sess, x, batch_size=7)  # the graph was traced with batch 2
    for bs in (1, 3, 5):
        (got,) = run_onnx(sess, x, batch_size=bs)
        assert got.shape == whole.shape and np.allclose(got, whole, atol=1e-5)
    assert cosines(torch_embed(model, x), whole).mean() > 0.999


def test_checker_failure_is_an_export_error(tmp_path, deploy8, parity_images, monkeypatch):
    import onnx

    def broken(proto, full_check=False):
        raise onnx.checker.ValidationError("Node (conv1) has input size 1 not in range [min=2, max=3].")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(ExportError, match=r"onnx.checker.*conv1.*nothing was written"):
        export_onnx(deploy8, "tensorrt", out=tmp_path / "m.onnx", parity_data=parity_images)
    assert not list(tmp_path.iterdir())


def test_compacted_file_is_checked_against_the_parity_graph(tmp_path, deploy8, parity_images, monkeypatch):
    """The ONNX Runtime file is compacted after parity: a compaction that changed a number must not ship."""
    from onnx import numpy_helper

    import qfair.export.graph as graph

    real = graph.compact_graph

    def corrupting(g, *a, **kw):
        out = real(g, *a, **kw)
        for i, t in enumerate(g.initializer):
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.float32 and arr.size > 8:  # e.g. a float bias or BatchNorm vector
                g.initializer[i].CopyFrom(numpy_helper.from_array(arr * -3.0 + 1.0, t.name))
                break
        return out

    monkeypatch.setattr(graph, "compact_graph", corrupting)
    with pytest.raises(ExportError, match="compacting the graph changed its outputs"):
        export_onnx(deploy8, "onnxruntime", out=tmp_path / "m.onnx", parity_data=parity_images, keep_float="all")
    assert not list(tmp_path.iterdir())


def test_failed_report_leaves_the_old_pair(tmp_path, deploy8, parity_images, monkeypatch):
    import qfair.utils.io as io

    out = tmp_path / "m.onnx"
    export_onnx(deploy8, "tensorrt", out=out, parity_data=parity_images)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(obj):
        raise KeyboardInterrupt  # Ctrl-C while the report is being written

    monkeypatch.setattr(io, "to_json", boom)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(deploy8, "tensorrt", out=out, parity_data=parity_images, opset=21)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, nothing replaced


def test_ctrl_c_during_the_renames_is_held(tmp_path, monkeypatch):
    import types

    import qfair.export.provenance as provenance

    out = tmp_path / "x.bin"
    out.write_bytes(b"old")
    export_report_path(out).write_text('{"old": true}')

    def ctrl_c_then_realpath(p):  # called inside the window between "both written" and "both renamed"
        os.kill(os.getpid(), signal.SIGINT)
        return os.path.realpath(p)

    monkeypatch.setattr(provenance, "os", types.SimpleNamespace(path=types.SimpleNamespace(
        realpath=ctrl_c_then_realpath)))
    with pytest.raises(KeyboardInterrupt):
        write_with_report(out, lambda tmp: tmp.write_bytes(b"new"), lambda n: {"bytes": n})
    assert out.read_bytes() == b"new" and json.loads(export_report_path(out).read_text()) == {"bytes": 3}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin", "x.export.json"]


def test_ctrl_c_before_the_renames_keeps_the_old_pair(tmp_path):
    out = tmp_path / "x.bin"
    out.write_bytes(b"old")
    export_report_path(out).write_text('{"old": true}')

    def report(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with_report(out, lambda tmp: tmp.write_bytes(b"new"), report)
    assert out.read_bytes() == b"old" and json.loads(export_report_path(out).read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin", "x.export.json"]
    with _hold_interrupt():  # hold() never called: nothing changes
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_tensorrt_refusal_counts_the_rest(tmp_path, quantface8, parity_images):
    with pytest.raises(ExportError, match=r"and \d+ more\. Re-quantize"):
        export_onnx(quantface8, "tensorrt", out=tmp_path / "m.onnx", parity_data=parity_images)


def test_build_engine_checks_its_inputs_before_tensorrt(tmp_path):
    from qfair.export.tensorrt import build_engine

    with pytest.raises(ExportError, match="min_batch"):
        build_engine(tmp_path / "m.onnx", min_batch=8, max_batch=4)
    with pytest.raises(ExportError, match="ONNX graph not found"):
        build_engine(tmp_path / "missing.onnx", max_batch=8)
