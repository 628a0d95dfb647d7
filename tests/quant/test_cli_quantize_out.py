"""`qfair quantize --out` into a folder that holds a run; the resolved arch in config.yaml; a quantized --model."""
import json

import yaml

from qfair.cli import main

from .test_cli_quantize import calib, ckpt  # noqa: F401  (pytest fixtures)

FAST = ["--calib", "synthetic", "--calib-size", "4", "--calib-batch-size", "4"]


def test_existing_run_is_refused_then_replaced_with_overwrite(ckpt, tmp_path, calib, capsys):  # noqa: F811
    out = tmp_path / "q6"
    assert main(["quantize", "--model", str(ckpt), "--bits", "6", *FAST, "--out", str(out)]) == 0
    for name in ("model.onnx", "model.export.json", "model.qpk"):  # what `qfair export` leaves there
        (out / name).write_text("old export")
    (out / "notes.txt").write_text("mine")
    (out / "bench").mkdir()  # graphs older versions of `qfair bench` left in the run
    (out / "bench" / "fp32.onnx").write_text("old graph")
    capsys.readouterr()
    assert main(["quantize", "--model", str(ckpt), "--bits", "8", *FAST, "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(out) in err and "model.pt" in err and "model.onnx" in err and "--overwrite" in err
    assert json.loads((out / "quant.json").read_text())["wbits"] == 6 and (out / "model.onnx").exists()

    assert main(["quantize", "--model", str(ckpt), "--bits", "8", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "quant.json").read_text())["wbits"] == 8
    assert not any((out / n).exists() for n in ("model.onnx", "model.export.json", "model.qpk", "bench"))
    assert (out / "notes.txt").read_text() == "mine"  # not a derived artefact: kept
    assert "deleted" in capsys.readouterr().out  # the deletion is reported


def test_config_records_the_guessed_arch(ckpt, tmp_path, calib):  # noqa: F811
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(ckpt), "--bits", "8", *FAST, "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["arch"] == "iresnet18"


def test_quantized_run_as_model_asks_for_the_float_checkpoint(ckpt, tmp_path, calib, capsys):  # noqa: F811
    run = tmp_path / "q8"
    assert main(["quantize", "--model", str(ckpt), "--bits", "8", *FAST, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["quantize", "--model", str(run), "--bits", "6", *FAST, "--out", str(tmp_path / "again")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already-quantized" in err and "needs the float checkpoint" in err and str(ckpt) in err
    assert "--arch" not in err
