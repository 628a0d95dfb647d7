"""`qfair qat --out DIR --resume` (and `qfair distill ...`) alone continue a run with the settings its config.yaml
records: flags given on top must not change the run's course, and a folder of another command is refused (CLI, a
tiny iresnet on the built-in data, CPU, one thread)."""
import json
from pathlib import Path

import pytest
import torch

from qfair.cli import main
from qfair.runs import RunDir
from qfair.train.checkpoint import load_checkpoint
from qfair.train.checks import _KEEP_ON_RESUME
from qfair.train.config import QatConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# none of these is the default (nor the value in the --config file): resuming with the defaults would be refused
FLAGS = ["--steps", "6", "--batch-size", "8", "--data-n", "24", "--lr", "0.05", "--wbits", "8", "--calib-n", "8",
         "--range-update-steps", "2", "--checkpoint-every", "2", "--log-every", "1"]


def _teacher(path):
    from qfair.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), path)


def _interrupt_at(monkeypatch, at):
    """Ctrl-C after optimizer step ``at`` (fit's callbacks run after that step's checkpoint)."""
    import qfair.train.api as api

    fit = api.fit

    def interrupted_fit(*args, callbacks=(), **kwargs):
        def stop(step, record):
            if step == at:
                raise KeyboardInterrupt

        return fit(*args, callbacks=[*callbacks, stop], **kwargs)

    monkeypatch.setattr(api, "fit", interrupted_fit)


def _weights(out):
    ck = load_checkpoint(Path(out) / "checkpoints" / "last.pt")
    return ck["step"], ck["student"]


def _err(capsys):
    return " ".join(capsys.readouterr().err.split())


def test_out_and_resume_alone_continue_the_run(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: read from the folder the run was started in
    _teacher("t.pt")
    start = ["qat", "--config", str(CONFIGS / "qat_kd_w6a6.yaml"), "--model", "t.pt", *FLAGS]
    assert main([*start, "--out", "ref"]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)
        assert main([*start, "--out", "cut"]) == 130
    assert _weights("cut")[0] == 4  # the last checkpoint before the interruption
    record = Path("cut/config.yaml").read_text()
    capsys.readouterr()

    assert main(["qat", "--out", "cut", "--resume"]) == 0
    summary = json.loads(Path("cut/train.json").read_text())
    assert summary["resumed_from"] == 4 and summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in Path("cut/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    ref_step, ref = _weights("ref")
    step, resumed = _weights("cut")
    assert step == ref_step == 6 and resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    assert Path("cut/config.yaml").read_text() == record  # the record of how the run was started stays

    # a flag that changes the run's course is refused by name, before any work
    last = Path("cut/checkpoints/last.pt").read_bytes()
    assert main(["qat", "--out", "cut", "--resume", "--batch-size", "16"]) == 2
    err = _err(capsys)
    assert "settings differ" in err and "batch_size: 8 -> 16" in err and "--out cut --resume" in err
    assert main(["qat", "--out", "cut", "--resume", "--model", "t2.pt"]) == 2
    assert "model: 't.pt' -> 't2.pt'" in _err(capsys)
    assert Path("cut/checkpoints/last.pt").read_bytes() == last

    # the run's own config.yaml as --config, with the settings that may change on resume; then the original
    # command line again (its --config file's keys are layered over the recorded settings, its flags over both)
    again = ["qat", "--config", "cut/config.yaml", "--out", "cut", "--resume", "--log-every", "3", "--device", "cpu"]
    capsys.readouterr()
    assert main(again) == 0
    out = capsys.readouterr().out
    assert "already finished at step 6; nothing trained" in out and " 0.0 " not in out  # was: images/s 0.0
    assert main([*start, "--out", "cut", "--resume"]) == 0
    step, after = _weights("cut")
    assert step == 6 and all(torch.equal(ref[k], after[k]) for k in ref)  # a finished run stays as it is


def test_distill_out_and_resume_alone(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    _teacher("t.pt")
    Path("student.yaml").write_text("student_kwargs: {width: 4}\n")  # a YAML-only setting: recorded, restored
    start = ["distill", "--config", "student.yaml", "--teacher", "t.pt", "--student-arch", "iresnet18", "--steps", "4",
             "--batch-size", "8", "--data-n", "16", "--checkpoint-every", "2", "--log-every", "1", "--lr", "0.05"]
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)
        assert main([*start, "--out", "d"]) == 130
    Path("elsewhere").mkdir()
    monkeypatch.chdir("elsewhere")  # t.pt, as typed, is read from the folder the run was started in
    assert main(["distill", "--out", "../d", "--resume"]) == 0
    summary = json.loads(Path("../d/train.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 4
    assert main(["distill", "--out", "../d", "--resume", "--teacher", "../t.pt"]) == 0  # the same file, typed
    assert main(["distill", "--out", "../d", "--resume", "--teacher", "../d/model.pt"]) == 2  # another way; not this
    assert "teacher: " in _err(capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--out", "d", "--resume", "--student-arch", "mobilefacenet"]) == 2
    assert "student_arch: 'iresnet18' -> 'mobilefacenet'" in _err(capsys)


@pytest.mark.parametrize("command, other", [("qat", "qfair quantize --model m.pt --out run"),
                                            ("qat", "qfair distill"), ("distill", "qfair qat")])
def test_a_folder_of_another_command_is_refused(tmp_path, capsys, command, other):
    out = tmp_path / "run"
    RunDir.create(out, {"wbits": 8, "model": "m.pt"}, command=other)
    before = (out / "config.yaml").read_text()
    assert main([command, "--out", str(out), "--resume"]) == 2
    err = _err(capsys)
    assert f"holds a `{other.split(' --')[0]}` run, not a `qfair {command}` run" in err
    assert (out / "config.yaml").read_text() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_nothing_to_resume_is_said_before_missing_settings(tmp_path, capsys):
    assert main(["qat", "--out", str(tmp_path / "new"), "--resume"]) == 2
    err = _err(capsys)
    assert "nothing to resume" in err and "needs --student" not in err and not (tmp_path / "new").exists()


def test_relative_paths_of_the_record_are_read_from_the_current_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    RunDir.create(out, QatConfig(model="t.pt", steps=3), command="qfair qat")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the run was started in tmp_path: t.pt is not here
    assert main(["qat", "--out", str(out), "--resume"]) == 2
    err = _err(capsys)
    assert "model 't.pt'" in err and "did not record the folder it was started in: resume from that folder" in err
    assert not (out / "checkpoints").exists()


def test_relative_paths_found_in_neither_folder_are_named(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    RunDir.create(out, QatConfig(model="t.pt", steps=3), command="qfair qat", extra={"started_in": str(tmp_path)})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["qat", "--out", str(out), "--resume"]) == 2
    err = _err(capsys)
    assert f"in neither the current folder ({tmp_path / 'elsewhere'}) nor the folder the run was started in " \
           f"({tmp_path})" in err and "--model PATH" in err
    assert not (out / "checkpoints").exists()


def test_resume_help_names_what_may_change():
    from qfair.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("qat", "distill"):
        text = next(a.help for a in sub.choices[command]._actions if a.dest == "resume")
        assert "`--out OUT --resume` alone" in text and "OUT/config.yaml" in text
        for key in _KEEP_ON_RESUME:
            assert "--" + key.replace("_", "-") in text, key
