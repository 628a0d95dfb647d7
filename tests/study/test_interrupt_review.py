"""A study stopped after a settings change must not leave a folder whose config.yaml describes other settings
than its report, and ``qfair study --dry-run`` must mark finished stages whose settings changed, as the run
judges them. Interruptions are simulated by a stage that raises KeyboardInterrupt (what Ctrl-C and SIGTERM
under ``qfair study`` raise) after the study recorded its config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qfair.runs import RunDir
from qfair.study import run_study
from qfair.study.dry_run import REPORT_REMOVED, describe_plan
from qfair.study.runner import _Study

from .test_resume import STAGE, _cfg, build_finished, copy_study

TOP = ("report.md", "metrics.json", "results.csv", "tables.tex", "timings.json")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-stage study (calib_size 8; tests work on copies) and its float checkpoint."""
    return build_finished(tmp_path_factory.mktemp("interrupt"))


@pytest.fixture
def study(finished, tmp_path):
    src, ckpt = finished
    return copy_study(src, tmp_path), ckpt


def _top_files(out: Path) -> dict[str, bytes]:
    files = [out / n for n in TOP] + sorted((out / "figures").glob("*.png"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


def _interrupt_stages(monkeypatch) -> None:
    """Every stage but the float model stops the run as Ctrl-C / SIGTERM would (after start())."""
    real = _Study.build

    def build(self, v):
        if v.kind != "float":
            raise KeyboardInterrupt
        return real(self, v)

    monkeypatch.setattr(_Study, "build", build)


def _recorded(out: Path) -> dict:
    return RunDir(out).read_config()["config"]


def _ptq_calib_images(out: Path) -> list:
    doc = json.loads((out / "metrics.json").read_text())
    return [r["meta"]["quant"]["calib_images"] for r in doc["results"] if r["meta"].get("kind") == "ptq"]


def test_an_interrupted_recompute_leaves_no_report_of_the_old_settings(study, monkeypatch):
    out, ckpt = study
    assert _top_files(out) and _recorded(out)["calib_size"] == 8
    cfg16 = _cfg(out, ckpt, calib_size=16)
    said: list[str] = []
    _interrupt_stages(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg16, say=said.append, recompute=True)
    assert _recorded(out)["calib_size"] == 16
    assert _top_files(out) == {}, "report files of the calib_size-8 run beside a calib_size-16 config.yaml"
    assert any(m.startswith("removed the previous report (") and "calib_size" in m for m in said), said
    monkeypatch.undo()
    lines: list[str] = []
    run_study(cfg16, say=lines.append)  # the plain rerun resumes and writes the report of the new settings
    assert set(_top_files(out)) >= set(TOP)
    assert _ptq_calib_images(out) == [16]


def test_a_settings_change_that_rebuilds_no_stage_drops_the_old_report_too(study, monkeypatch):
    """A new report title (or benchmark, bootstrap count...) rebuilds no stage, but the old report no
    longer matches config.yaml."""
    out, ckpt = study
    _interrupt_stages(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(out, ckpt, name="renamed"), say=lambda m: None)
    assert _recorded(out)["name"] == "renamed"
    assert _top_files(out) == {}


def test_an_interrupted_plain_rerun_keeps_the_report(study, monkeypatch):
    """Unchanged settings: the report still describes the folder and stays until the rerun replaces it."""
    out, ckpt = study
    before = _top_files(out)
    (out / ".stages" / f"{STAGE}.done").unlink()  # a stage left to run (the cheap path needs none)
    _interrupt_stages(monkeypatch)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(out, ckpt), say=said.append)
    assert _top_files(out) == before
    assert not any("removed the previous report" in m for m in said)


def test_the_same_folder_named_another_way_keeps_the_report(study, monkeypatch):
    out, ckpt = study
    before = _top_files(out)
    monkeypatch.chdir(out.parent)
    _interrupt_stages(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(Path(out.name), ckpt), say=lambda m: None)
    assert _top_files(out) == before


def test_a_report_without_a_readable_config_is_dropped(study, monkeypatch):
    out, ckpt = study
    (out / "config.yaml").write_text("config: [unclosed\n")
    _interrupt_stages(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(out, ckpt), say=lambda m: None)
    assert _top_files(out) == {} and _recorded(out)["calib_size"] == 8


def test_an_interrupted_recompute_after_a_retrained_checkpoint_drops_the_report(study, monkeypatch):
    """The study's config is unchanged (same checkpoint path), but its stages are rebuilt from other weights
    (a float model retrained into the same file): the report of the old weights goes too."""
    out, ckpt = study
    monkeypatch.setattr(_Study, "float_digest", lambda self, v: "0" * 16)  # what a retrained file gives
    _interrupt_stages(monkeypatch)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_cfg(out, ckpt), say=said.append, recompute=True)
    assert any(m.startswith(f"recomputing {STAGE} (float_weights: ") for m in said), said
    assert _top_files(out) == {}
    assert any("made from the stages now rebuilt" in m for m in said), said


# ---------------------------------------------------------------------------------------------- dry run
def _dry_run(out: Path, capsys, *extra: str, **kw) -> list[str]:
    from qfair.cli import main

    data = yaml.safe_load((out / "config.yaml").read_text())["config"]
    data.update(kw)
    yml = out.parent / "st.yaml"
    yml.write_text(yaml.safe_dump(data))
    assert main(["study", "--config", str(yml), "--dry-run", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_dry_run_marks_a_finished_stage_whose_settings_changed(study, capsys):
    out, ckpt = study
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    lines = _dry_run(out, capsys, calib_size=16)
    stage = next(ln for ln in lines if ln.startswith("[2/2]"))
    assert STAGE in stage and "(finished, settings changed: " in stage
    # the images the stage calibrated on (quant.calib_size is the study-wide count, not this stage's: not repeated)
    assert "calibration.size: 8 -> 16" in stage and "quant.calib_size" not in stage
    assert "--recompute" in lines[-1] and "stops before running anything" in lines[-1]
    assert not any(ln.startswith(REPORT_REMOVED) for ln in lines)  # the run stops: the report stays
    lines = _dry_run(out, capsys, "--recompute", calib_size=16)
    assert "--recompute:" in lines[-1]
    assert lines[-2].startswith(f"{REPORT_REMOVED} (") and "report.md" in lines[-2]
    assert "made with other settings (calib_size)" in lines[-2]
    # unchanged settings: plainly finished, as before
    lines = _dry_run(out, capsys)
    assert lines[-2].endswith("(finished)") and lines[-1] == "finished stages are read back, not recomputed"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot  # the dry run wrote nothing


def test_dry_run_says_what_the_run_says(study):
    """The same comparison as the run: the run's refusal names exactly the keys the dry run shows."""
    from qfair.utils.errors import ConfigError

    out, ckpt = study
    cfg16 = _cfg(out, ckpt, calib_size=16)
    stage = describe_plan(cfg16)[1]
    shown = stage.split("settings changed: ", 1)[1].rstrip(")")
    with pytest.raises(ConfigError) as exc:
        run_study(cfg16, say=lambda m: None)
    assert f"  {STAGE}: {shown}\n" in str(exc.value)


def test_dry_run_marks_a_damaged_stage(study):
    out, ckpt = study
    (out / STAGE / "model.pt").unlink()
    stage = describe_plan(_cfg(out, ckpt))[1]
    assert "(finished, but damaged (rebuilt when the study runs): " in stage and "model.pt is missing" in stage
