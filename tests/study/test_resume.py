"""Resuming a study after what a flaky cluster does to it: a hard kill (temporary files left), files of
finished stages lost or cut short, a second study started into the same folder, SIGTERM, files in the way."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qfair.config import config_from_dict
from qfair.runs import DamagedRunFileError, RunDir
from qfair.study import StudyConfig, run_study
from qfair.study.plan import plan
from qfair.study.runner import _Study
from qfair.utils.errors import QfairError

STAGE = "tiny-w8a8-real"


def _cfg(out: Path, ckpt: Path, **kw) -> StudyConfig:
    """One PTQ stage, no fine-tuning, no export, no bootstrap: the smallest study with a finished stage."""
    data = {
        "name": "tiny", "out": str(out), "seed": 0,
        "models": [{"name": "tiny", "checkpoint": str(ckpt), "arch": "iresnet18"}],
        "bench": ["builtin:tiny"], "bits": [8], "calibration": [{"label": "real", "source": "builtin"}],
        "calib_size": 8, "calib_batch_size": 4,
        "finetune": {"enabled": False}, "export": {"enabled": False},
        "eval": {"flip": False, "batch_size": 32, "n_bootstrap": 0, "null_draws": 0},
    }
    data.update(kw)
    return config_from_dict(StudyConfig, data, source="test")


def build_finished(root: Path) -> tuple[Path, Path]:
    """A finished one-stage study under ``root`` (its folder, its float checkpoint)."""
    from qfair.models import create_model

    torch.manual_seed(0)
    ckpt = root / "tiny.pt"
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), ckpt)
    run_study(_cfg(root / "done", ckpt), say=lambda m: None)
    return root / "done", ckpt


def copy_study(src: Path, tmp_path: Path) -> Path:
    """A copy of a finished study folder that tests may change (its lock file left out)."""
    out = tmp_path / "study"
    shutil.copytree(src, out)
    (out / ".lock").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-stage study (built once; tests work on copies) and its checkpoint."""
    return build_finished(tmp_path_factory.mktemp("resume"))


@pytest.fixture
def study(finished, tmp_path):
    """A copy of the finished study: (folder, config)."""
    src, ckpt = finished
    out = copy_study(src, tmp_path)
    return out, _cfg(out, ckpt)


def _rerun(cfg: StudyConfig) -> list[str]:
    lines: list[str] = []
    run_study(cfg, say=lines.append)
    return lines


def test_a_resumed_run_writes_the_same_results_as_a_fresh_one(study, finished):
    """The fresh run evaluated the model in memory and a resumed run the one read back: both must give
    byte-identical result files (the record's key order differed), and a rebuilt stage the same weights."""
    out, cfg = study
    fresh = {n: (finished[0] / n).read_bytes() for n in ("metrics.json", "results.csv", "tables.tex", "report.md")}
    assert "(resumed)" in _stage_line(_rerun(cfg))
    assert {n: (out / n).read_bytes() for n in fresh} == fresh


def _stage_line(lines: list[str]) -> str:
    return next(line for line in lines if STAGE in line and line.startswith("["))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "empty"])
def test_lost_or_cut_short_weights_are_rebuilt(study, damage):
    """A finished marker whose model.pt is gone or cut short: the stage is rebuilt, not a dead end."""
    out, cfg = study
    weights = out / STAGE / "model.pt"
    good = weights.read_bytes()
    if damage == "deleted":
        weights.unlink()
    else:
        weights.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    lines = _rerun(cfg)
    assert any(line.startswith(f"rebuilding {STAGE}: marked finished, but") and "model.pt" in line for line in lines)
    assert "(resumed)" not in _stage_line(lines)
    assert weights.read_bytes() == good  # rebuilt with the same settings and seed: the same file
    assert "(resumed)" in _stage_line(_rerun(cfg))


@pytest.mark.parametrize("name, text", [("config.yaml", "config: {variant: [unclosed\n"),
                                        ("quant.json", '{"format": '), ("config.yaml", "- a list\n")])
def test_damaged_stage_records_are_rebuilt_not_a_traceback(study, name, text):
    out, cfg = study
    (out / STAGE / name).write_text(text)
    lines = _rerun(cfg)
    assert any(line.startswith(f"rebuilding {STAGE}") and name in line for line in lines)
    assert "(resumed)" in _stage_line(_rerun(cfg))


def test_damaged_config_is_a_qfair_error_naming_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("a: [b\n")
    with pytest.raises(DamagedRunFileError, match=r"config\.yaml: unreadable") as exc:
        RunDir(tmp_path).read_config()
    assert isinstance(exc.value, QfairError) and isinstance(exc.value, OSError)


def test_stages_built_from_a_damaged_stage_are_rebuilt_too(tmp_path, finished):
    """Damage is followed downstream like a changed setting: KD and ONNX stages built from a damaged PTQ
    stage are rebuilt (checked on markers alone, nothing runs)."""
    _, ckpt = finished
    out = tmp_path / "study"
    cfg = _cfg(out, ckpt, bits=[8, 6], calibration=[{"label": "real", "source": "builtin"}],
               finetune={"enabled": True, "bits": [6], "start_from": "real"},
               export={"enabled": True, "bits": [8], "calibration": ["real"], "recipe": "deploy"})
    st = _Study(cfg, say=lambda m: None)
    variants = plan(cfg)
    for v in variants[1:]:
        st.root.path.mkdir(exist_ok=True)
        st.root.mark_done(v.id)
    damaged = st.damaged_stages(variants)
    assert "quant.json" in damaged["tiny-w6a6-real"]
    assert damaged["tiny-w6a6-real-kd"] == "built from the damaged stage tiny-w6a6-real"
    assert damaged["tiny-w8a8-real-deploy-onnx"] == "built from the damaged stage tiny-w8a8-real-deploy"


def test_cut_short_onnx_graph_is_damaged(tmp_path):
    from qfair.study.integrity import stage_damage as _damage

    (tmp_path / "config.yaml").write_text("config: {variant: m-onnx}\n")  # a stage's record of its settings
    (tmp_path / "model.onnx").write_bytes(b"\x08" * 50)
    (tmp_path / "model.export.json").write_text(json.dumps({"bytes": 100}))
    assert "cut short" in _damage(tmp_path, "onnx")
    (tmp_path / "model.onnx").write_bytes(b"\x08" * 100)
    assert _damage(tmp_path, "onnx") is None
    (tmp_path / "model.export.json").unlink()
    assert "model.export.json is missing" in _damage(tmp_path, "onnx")


def test_temporary_files_of_a_killed_run_are_removed(study):
    out, cfg = study
    left = [out / STAGE / ".model.pt.k3j9x_2a.tmp", out / ".cache" / "embeddings" / ".0a1b.npy.abcdefgh.tmp",
            out / ".report.md.zzzzzzzz.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    mine = out / "notes.tmp"  # not named like an atomic write's temporary file: the user's, kept
    mine.write_text("keep")
    lines = _rerun(cfg)
    assert "removed 3 temporary file(s) left by an interrupted run" in lines
    assert not any(p.exists() for p in left) and mine.exists()
    assert "(resumed)" in _stage_line(lines)


def test_a_second_study_into_the_same_folder_is_refused(study):
    out, cfg = study
    said: list[str] = []
    with RunDir(out).lock():
        with pytest.raises(QfairError, match=re.escape(f"{out} is in use by another qfair command (pid {os.getpid()}")):
            run_study(cfg, say=said.append)
    assert said == []
    assert "(resumed)" in _stage_line(_rerun(cfg))  # the lock is released with the block


def test_the_lock_dies_with_a_killed_process(tmp_path):
    """SIGKILL cannot run cleanup code: the OS must drop the lock, or a killed study blocks its folder."""
    script = textwrap.dedent(f"""
        import time
        from qfair.runs import RunDir
        with RunDir.open({str(tmp_path)!r}).lock():
            print("locked", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(QfairError, match=f"pid {child.pid}"):
            with RunDir(tmp_path).lock():
                pass
    finally:
        child.kill()
        child.wait()
    with RunDir(tmp_path).lock():
        pass


@pytest.mark.parametrize("where", [STAGE, ".stages", ".cache", "figures"])
def test_a_file_where_the_study_writes_a_folder_fails_before_any_work(study, where):
    out, cfg = study
    target = out / where
    shutil.rmtree(target)
    (out / ".stages" / f"{STAGE}.done").unlink(missing_ok=True)
    target.write_text("in the way")
    said: list[str] = []
    with pytest.raises(QfairError, match=re.escape(f"{target} is a file, but the study writes a folder there")):
        run_study(cfg, say=said.append)
    assert said == [] and target.read_text() == "in the way"


def test_a_folder_where_the_study_writes_a_file_fails_before_any_work(study):
    out, cfg = study
    (out / "metrics.json").unlink()
    (out / "metrics.json").mkdir()
    said: list[str] = []
    with pytest.raises(QfairError, match=r"metrics\.json: it is a directory"):
        run_study(cfg, say=said.append)
    assert said == []


def test_sigterm_stops_a_study_like_ctrl_c():
    from qfair.cli.demo import term_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with term_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_checkpoint_replaced_at_the_same_path_is_a_changed_setting(tmp_path):
    """A float model retrained into the same file: its quantized stages are stale, not finished."""
    from qfair.models import create_model
    from qfair.utils.errors import ConfigError

    ckpt = tmp_path / "float.pt"
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), ckpt)
    cfg = _cfg(tmp_path / "study", ckpt)
    run_study(cfg, say=lambda m: None)
    assert "(resumed)" in _stage_line(_rerun(cfg))
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), ckpt)  # other weights
    with pytest.raises(ConfigError, match=rf"{STAGE}: float_weights: '[0-9a-f]+' -> '[0-9a-f]+'"):
        run_study(cfg, say=lambda m: None)
