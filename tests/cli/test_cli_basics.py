"""The CLI: help, version, models, info, and cheap imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from qfair.cli import build_parser, main


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "qfair 0." in capsys.readouterr().out
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_every_registered_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"models", "info"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        assert text, name
        assert "(default: )" not in text, f"{name} --help shows an empty default"


def test_models_and_info(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "iresnet50" in out and "mobilefacenet" in out and "mbf" in out
    assert main(["info", "r50"]) == 0
    out = capsys.readouterr().out
    assert "43.59 M" in out and "512" in out and "Conv2d" in out


def test_info_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["info", "iresnet5O"]) == 2
    assert "neither a file nor a registered model" in capsys.readouterr().err
    p = tmp_path / "x.txt"
    p.write_text("hello")
    assert main(["info", str(p), "--arch", "mbf"]) == 2
    assert "x.txt" in capsys.readouterr().err


def test_info_on_a_quantized_run_folder(tmp_path, capsys):
    import torch

    from qfair.models import create_model
    from qfair.quant import QuantConfig, quantize, save_quantized

    torch.manual_seed(0)
    fp = create_model("iresnet18", width=4, num_features=16).eval()
    save_quantized(quantize(fp, QuantConfig(bits=6), [torch.rand(2, 3, 112, 112) * 2 - 1]), tmp_path / "q6")
    assert main(["info", str(tmp_path / "q6")]) == 0
    out = capsys.readouterr().out
    assert "iresnet18" in out and "W6A6" in out
    from qfair.models.summary import summarize
    from qfair.quant import load_quantized

    counts = summarize(load_quantized(tmp_path / "q6")).layer_counts
    float_counts = summarize(fp).layer_counts
    # the quantized layers are listed (they used to vanish: they have quantizer children, so are not leaves)
    assert counts["QuantConv2d"] == float_counts["Conv2d"] and counts["QuantLinear"] == float_counts["Linear"]
    assert "Conv2d" not in counts and counts["WeightQuantizer"] >= counts["QuantConv2d"]


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "qfair", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("qfair ")


def test_import_is_cheap():
    code = ("import sys, qfair, qfair.cli, qfair.data, qfair.eval, qfair.quant, qfair.export, qfair.train; "
            "qfair.cli.build_parser(); "
            "bad = [m for m in ('onnx', 'onnxruntime', 'tensorrt', 'triton', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"import qfair pulled in: {r.stdout.strip()}"
    r = subprocess.run([sys.executable, "-c", "import sys, qfair; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False"


def test_ctrl_c_message_says_what_is_true_for_the_command(capsys, monkeypatch):
    # study / demo resume by rerunning; a one-shot command (here `models`) has nothing to resume
    import qfair.cli.models
    import qfair.cli.study

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(qfair.cli.models, "run", interrupted)
    monkeypatch.setattr(qfair.cli.study, "run", interrupted)
    assert main(["models"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "written atomically" in err and "resume" not in err
    assert main(["study", "--config", "x.yaml"]) == 130
    assert "rerun the same command to resume" in " ".join(capsys.readouterr().err.split())


def test_unknown_option_names_the_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--no-such-option"])
    err = capsys.readouterr().err
    assert "qfair quantize: error: unrecognized arguments: --no-such-option" in err and "usage: qfair quantize" in err
    with pytest.raises(SystemExit):
        main(["groups", "train", "--no-such-option"])
    assert "qfair groups train: error: unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--debug", "info", "iresnet5O"],
    ["info", "iresnet5O", "--debug"],
    ["groups", "estimate", "--debug", "--head", "/nonexistent-head"],
])
def test_debug_works_before_or_after_the_subcommand(argv, capsys):
    from qfair.utils.errors import QfairError
    with pytest.raises(QfairError):  # --debug re-raises instead of printing a one-line error
        main(argv)


def test_without_debug_the_error_is_one_line(capsys):
    assert main(["info", "iresnet5O"]) == 2
    assert "Traceback" not in capsys.readouterr().err
