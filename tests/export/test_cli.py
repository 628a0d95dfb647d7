"""`qfair export` and `qfair bench` on a run folder (tiny model registered for the test only)."""
import json

import pytest

pytest.importorskip("onnxruntime")

from qfair.cli import main  # noqa: E402

from .conftest import TinyFace  # noqa: E402


@pytest.fixture()
def run_dir(tmp_path, deploy6, monkeypatch):
    from qfair.models import MODELS
    from qfair.quant import save_quantized

    monkeypatch.setitem(MODELS._items, "tinyface_test", lambda **kw: TinyFace())
    save_quantized(deploy6, tmp_path / "run", arch={"name": "tinyface_test", "kwargs": {}})
    return tmp_path / "run"


def test_export_packed_and_bench(run_dir, capsys):
    assert main(["export", str(run_dir), "--target", "onnxruntime", "--n-parity", "24"]) == 0
    rep = json.loads((run_dir / "model.export.json").read_text())
    assert rep["target"] == "onnxruntime" and rep["bits"] == 6 and rep["parity"]["passed"]
    assert "keep_float choice" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--target", "tensorrt", "--n-parity", "24"]) == 0  # same model.onnx
    out = " ".join(capsys.readouterr().out.split())
    assert "replacing" in out and "exported for target onnxruntime" in out and "model-tensorrt.onnx" in out
    assert json.loads((run_dir / "model.export.json").read_text())["target"] == "tensorrt"
    assert main(["export", str(run_dir), "--format", "packed"]) == 0
    assert (run_dir / "model.qpk").exists()
    assert main(["bench", str(run_dir), "--batches", "1", "2", "--repeats", "1", "--warmup", "0"]) == 0
    res = json.loads((run_dir / "bench.json").read_text())
    assert {"torch fp32", "onnxruntime fp32", "onnxruntime int8"} <= set(res["runtimes"])
    assert res["sizes_bytes"]["int8_onnx"] < res["sizes_bytes"]["fp32_onnx"]


def test_bench_times_the_integer_layout_when_the_export_fell_back(run_dir, monkeypatch):
    """When the shipped ONNX Runtime graph is the float-kernel fallback (the integer layout failed parity; here
    recorded in the report, as on a machine where one verification pair flipped), bench also times the
    --requant layout and says why it was not shipped: from the fallback's reasons (a report with no
    evaluated-model cosine used to crash the note)."""
    import qfair.export.api as api
    from qfair.export.provenance import export_report_path

    real = api.export_onnx

    def export(*args, requant=False, **kwargs):
        path = real(*args, requant=requant, **kwargs)
        if not requant:
            report = export_report_path(path)
            doc = json.loads(report.read_text())
            doc["integer_layout_parity"] = {"passed": False, "reasons": ["one verification pair flipped"]}
            report.write_text(json.dumps(doc))
        return path

    monkeypatch.setattr(api, "export_onnx", export)
    assert main(["bench", str(run_dir), "--batches", "1", "--repeats", "1", "--warmup", "0"]) == 0
    res = json.loads((run_dir / "bench.json").read_text())
    assert "onnxruntime int8 (requant)" in res["runtimes"]
    assert any("failed parity (one verification pair flipped)" in n for n in res["notes"]), res["notes"]


def test_cli_bad_inputs(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--target", "coreml"]) == 2
    assert "coreml" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(tmp_path / "nope" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no_such_run")]) == 2
    assert main(["export", str(run_dir), "--format", "tensorrt", "--target", "onnxruntime"]) == 2
    from qfair.export.tensorrt import tensorrt_status

    if not tensorrt_status()[0]:
        capsys.readouterr()
        assert main(["export", str(run_dir), "--format", "tensorrt"]) == 2
        assert "TensorRT" in capsys.readouterr().err


def test_configs_load():
    from pathlib import Path

    from qfair.config import load_config
    from qfair.export.config import BenchConfig, ExportConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(ExportConfig, root / "export_onnxruntime.yaml").target == "onnxruntime"
    assert load_config(BenchConfig, root / "bench.yaml").batches == (1, 16, 64)


def _unwrapped(capsys) -> str:
    """stderr with the console's line wrapping undone."""
    return capsys.readouterr().err.replace("\n", "")


def test_bench_batches_range_checked(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "no_run"), "--batches", "0"]) == 2
    assert "--batches (command line): got 0, allowed range is [1," in _unwrapped(capsys)
    assert main(["bench", str(tmp_path / "no_run"), "--batches", "1", "-1"]) == 2
    assert "got -1" in _unwrapped(capsys)


def test_output_path_that_is_a_directory_fails_first(run_dir, tmp_path, capsys):
    out = tmp_path / "outdir"
    out.mkdir()
    for extra in (["--format", "packed"], ["--target", "onnxruntime"]):
        assert main(["export", str(tmp_path / "no_run"), *extra, "--out", str(out)]) == 2
        assert f"cannot write {out}: it is a directory" in _unwrapped(capsys)
    assert main(["bench", str(run_dir), "--out", str(out)]) == 2
    assert f"cannot write {out}: it is a directory" in _unwrapped(capsys)
    assert out.is_dir() and not list(out.iterdir())
    assert not (run_dir / "bench").exists()  # nothing was exported before the check


def test_export_packed_through_a_symlink(run_dir, tmp_path):
    real = tmp_path / "real.qpk"
    real.write_bytes(b"old")
    link = tmp_path / "link.qpk"
    link.symlink_to(real)
    assert main(["export", str(run_dir), "--format", "packed", "--out", str(link)]) == 0
    assert link.is_symlink() and real.stat().st_size > 3


def test_bench_skips_tensorrt_for_an_asymmetric_model(tmp_path, quantface8, monkeypatch):
    """On a GPU machine, bench of a QuantFace (asymmetric) run stopped with the TensorRT target's ExportError
    and timed nothing; now it times the CPU runtimes and says why TensorRT was skipped (TensorRT presence
    faked: the TensorRT graph is refused before any engine is built)."""
    import qfair.export.tensorrt as trt_mod
    from qfair.models import MODELS
    from qfair.quant import save_quantized

    monkeypatch.setitem(MODELS._items, "tinyface_test", lambda **kw: TinyFace())
    save_quantized(quantface8, tmp_path / "run", arch={"name": "tinyface_test", "kwargs": {}})
    monkeypatch.setattr(trt_mod, "tensorrt_status", lambda: (True, "ok"))
    monkeypatch.setattr(trt_mod, "build_engine", lambda *a, **k: pytest.fail("no engine for an asymmetric model"))
    assert main(["bench", str(tmp_path / "run"), "--batches", "1", "--repeats", "1", "--warmup", "0"]) == 0
    res = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert "onnxruntime int8" in res["runtimes"] and not any("tensorrt" in r for r in res["runtimes"])
    assert any("TensorRT skipped: no TensorRT graph for this model" in n and "recipe deploy" in n
               for n in res["notes"]), res["notes"]


def test_bench_of_a_folder_that_is_not_a_quantized_run_suggests_a_checkpoint(tmp_path, capsys):
    folder, ckpt = tmp_path / "sens", tmp_path / "m.pt"
    folder.mkdir()
    ckpt.write_bytes(b"x")
    assert main(["bench", str(folder)]) == 2
    err = _unwrapped(capsys)
    assert "not a quantized run" in err and "qfair quantize --model MODEL.pt" in err  # was: --model <the folder>
    assert main(["bench", str(ckpt)]) == 2
    assert f"qfair quantize --model {ckpt} --bits 8" in _unwrapped(capsys)
