"""A newcomer's review of the command line: errors stay one line, interrupted runs leave their folder as it was,
flags that would be silently ignored or contradict each other are refused, naming them."""
from __future__ import annotations

import argparse

import pytest
import torch

import qfair.quant
from qfair.cli import build_parser, main
from qfair.models import create_model
from qfair.runs import RunDir


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "fp.pt"
    torch.save(create_model("iresnet18", width=4, num_features=16).state_dict(), p)
    return str(p)


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_a_long_error_is_one_line_when_redirected(capsys):
    # rich folded errors at 80 columns when stderr is not a terminal: a path or the command to rerun was cut in two
    name = "no-such-model-" + "x" * 120
    assert main(["info", name]) == 2
    err = _err(capsys).rstrip("\n")
    assert "\n" not in err and name in err


def _boom(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_quantize_overwrite_keeps_the_old_runs_config(ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    RunDir.create(out, {"bits": 8}, command="qfair quantize --old")
    (out / "model.pt").write_bytes(b"old")
    (out / "quant.json").write_text("{}")
    before = (out / "config.yaml").read_text()
    monkeypatch.setattr(qfair.quant, "quantize", _boom)
    assert main(["quantize", "--model", ckpt, "--bits", "6", "--calib", "builtin", "--calib-size", "2",
                 "--calib-batch-size", "2", "--out", str(out), "--overwrite"]) == 130
    assert (out / "config.yaml").read_text() == before  # it still describes the model.pt beside it
    assert (out / "model.pt").read_bytes() == b"old"


def test_interrupted_sensitivity_keeps_the_earlier_runs_config(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "sens"
    RunDir.create(out, {"bits": 8}, command="qfair sensitivity --old")
    before = (out / "config.yaml").read_text()
    monkeypatch.setattr(qfair.quant, "sensitivity", _boom)
    assert main(["sensitivity", "--model", ckpt, "--calib", "builtin", "--calib-size", "2", "--calib-batch-size", "2",
                 "--out", str(out)]) == 130
    assert (out / "config.yaml").read_text() == before


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_evaluate_and_compare_refuse_another_commands_run_folder(command, ckpt, tmp_path, capsys):
    out = tmp_path / "sens"
    RunDir.create(out, {"top": 5}, command="qfair sensitivity --out sens")
    before = (out / "config.yaml").read_text()
    targets = [ckpt] if command == "evaluate" else [ckpt, str(tmp_path / "other.pt")]
    if command == "compare":
        (tmp_path / "other.pt").write_bytes((tmp_path / "fp.pt").read_bytes())
    assert main([command, *targets, "--bench", "builtin:tiny", "--out", str(out)]) == 2
    err = " ".join(_err(capsys).split())
    assert f"--out {out} holds a run of another command ('qfair sensitivity'" in err
    assert (out / "config.yaml").read_text() == before
    (tmp_path / "afile").write_text("x")
    assert main([command, *targets, "--bench", "builtin:tiny", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in _err(capsys) and (tmp_path / "afile").read_text() == "x"


def test_evaluate_records_its_command_and_reruns_into_its_folder(ckpt, tmp_path, capsys):
    argv = ["evaluate", ckpt, "--arch", "iresnet18", "--bench", "builtin:tiny", "--out", str(tmp_path / "e"),
            "--no-figures", "--n-bootstrap", "0", "--no-cache", "--no-flip"]
    assert main(argv) == 0
    assert RunDir(tmp_path / "e").written_by().startswith("qfair evaluate ")  # not the test runner's argv
    assert main(argv) == 0


def test_evaluate_refuses_arch_for_a_quantized_run_folder(tmp_path, capsys):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "quant.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "q"), "--arch", "r50", "--out", str(tmp_path / "e")]) == 2
    assert "drop --arch" in _err(capsys)


@pytest.mark.parametrize("fmt,out,want", [("packed", "x.onnx", "x.qpk"), ("onnx", "x.qpk", "x.onnx"),
                                          ("onnx", "x", "x.onnx"), ("tensorrt", "x.onnx", "x.engine")])
def test_export_refuses_an_out_named_for_another_format(fmt, out, want, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", fmt, "--out", str(tmp_path / out)]) == 2
    err = " ".join(_err(capsys).split())
    assert f"--format {fmt}" in err and f"--out {tmp_path / want}" in err


def test_quantize_refuses_calib_data_that_builtin_calibration_ignores(ckpt, tmp_path, capsys):
    assert main(["quantize", "--model", ckpt, "--calib", "builtin", "--calib-data", str(tmp_path),
                 "--out", str(tmp_path / "q")]) == 2
    assert f"--calib-data {tmp_path} is not read with --calib builtin" in _err(capsys)
    assert not (tmp_path / "q").exists()


def test_synth_refuses_an_unused_model_and_a_run_folder(ckpt, tmp_path, capsys):
    assert main(["synth", "--source", "builtin-synthetic", "--model", ckpt, "--n", "2",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--model is not used with --source builtin-synthetic" in _err(capsys)
    RunDir.create(tmp_path / "run", {}, command="qfair quantize --out run")
    assert main(["synth", "--source", "builtin-synthetic", "--n", "2", "--out", str(tmp_path / "run")]) == 2
    assert "holds a run of another command" in _err(capsys)
    assert not list((tmp_path / "run").glob("*.png"))


def test_groups_without_an_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["groups"])
    assert exc.value.code == 2 and "choose an ACTION: train or estimate" in _err(capsys)


def test_qat_interrupt_before_the_first_checkpoint_says_so(tmp_path):
    from qfair.cli.qat import interrupted

    msg = interrupted(argparse.Namespace(out=str(tmp_path)), ["qat", "--out", str(tmp_path)])
    assert "before the first checkpoint" in msg and msg.endswith("--resume")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert "checkpoints are kept" in interrupted(argparse.Namespace(out=str(tmp_path)), ["qat", "--resume"])


def test_a_list_flag_given_twice_adds_to_the_list():
    # `qfair evaluate --bench a --bench b` reads both; `qfair study --bench a --bench b` used to keep only b
    p = build_parser()
    assert p.parse_args(["study", "--config", "s.yaml", "--bench", "a", "--bench", "b"]).bench == ["a", "b"]
    assert p.parse_args(["study", "--config", "s.yaml", "--bench", "a", "b"]).bench == ["a", "b"]
    assert p.parse_args(["quantize", "--skip", "fc", "--skip", "conv1"]).skip == ["fc", "conv1"]


@pytest.mark.parametrize("argv", [["quantize", "--bits", "9", "--out", "x"],
                                  ["sensitivity", "--top", "0", "--out", "x"]])
def test_a_bad_setting_fails_before_torch_is_imported(argv):
    import subprocess
    import sys

    code = f"import sys; from qfair.cli import main; rc = main({argv!r}); print(rc, 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr


def test_every_config_flag_is_spelled_config_file():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    parsers = dict(sub.choices)
    parsers.update({f"groups {k}": v for k, v in next(a for a in sub.choices["groups"]._actions
                                                       if a.dest == "action").choices.items()})
    for name, p in parsers.items():
        for a in p._actions:
            if "--config" in a.option_strings:
                assert a.metavar == "FILE", name


def test_compare_with_one_model_fails_before_reading_a_benchmark(ckpt, tmp_path, capsys, monkeypatch):
    import qfair.data

    def no_benchmark(*args, **kwargs):
        raise AssertionError("a benchmark was read")

    monkeypatch.setattr(qfair.data, "open_benchmark", no_benchmark)
    assert main(["compare", ckpt, "--bench", "builtin:tiny", "--out", str(tmp_path / "c")]) == 2
    assert "compare needs at least two models" in _err(capsys)


def test_qat_student_that_is_a_checkpoint_file_points_to_model(ckpt, tmp_path, capsys):
    assert main(["qat", "--student", ckpt, "--teacher", ckpt, "--steps", "1", "--out", str(tmp_path / "q")]) == 2
    err = " ".join(_err(capsys).split())
    assert f"--student {ckpt} is a file" in err and f"--model {ckpt}" in err
