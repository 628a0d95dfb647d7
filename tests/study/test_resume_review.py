"""Resume review: a finished stage is judged by the weights it was built from, not by how the path to
them is spelled."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from qfair.study import run_study
from qfair.utils.errors import ConfigError

from .test_resume import STAGE, _cfg, build_finished, copy_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return build_finished(tmp_path_factory.mktemp("resume_review"))


def test_the_same_weights_by_another_path_resume(finished, tmp_path, monkeypatch):
    """``ckpt.pt`` given relative, or copied elsewhere (a study moved to another machine), is the same float
    model: its finished stages are read back, not refused as changed settings (or rebuilt by --recompute)."""
    src, ckpt = finished
    out = copy_study(src, tmp_path)
    moved = tmp_path / "elsewhere" / "tiny.pt"
    moved.parent.mkdir()
    shutil.copy(ckpt, moved)
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    run_study(_cfg(out, os.path.relpath(moved, tmp_path)), say=said.append)
    assert any(line.startswith(f"[2/2] {STAGE}") and "(resumed)" in line for line in said), said
    assert not any(line.startswith("recomputing") for line in said), said


@pytest.mark.parametrize("arch", [None, "IResNet18"])
def test_the_same_architecture_spelled_otherwise_resumes(finished, tmp_path, arch):
    """``arch`` left out (guessed from the checkpoint: iresnet18) or spelled in other case builds the same
    model from the same weights: the finished stage is read back."""
    src, ckpt = finished
    out = copy_study(src, tmp_path)
    model = {"name": "tiny", "checkpoint": str(ckpt), **({"arch": arch} if arch else {})}
    said: list[str] = []
    run_study(_cfg(out, ckpt, models=[model]), say=said.append)
    assert any(line.startswith(f"[2/2] {STAGE}") and "(resumed)" in line for line in said), said


def test_other_weights_by_another_path_are_still_refused(finished, tmp_path):
    src, _ = finished
    out = copy_study(src, tmp_path)
    from qfair.models import create_model

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), other)
    with pytest.raises(ConfigError, match=rf"{STAGE}: model.checkpoint: .*; float_weights: "):
        run_study(_cfg(out, other), say=lambda m: None)


def test_a_negative_seed_is_refused_before_anything_runs(tmp_path):
    """numpy refuses a negative seed: the study used to write its config.yaml, evaluate the float model and
    then stop with a traceback."""
    from qfair.config import config_from_dict
    from qfair.study import StudyConfig

    data = {"out": str(tmp_path / "s"), "seed": -1, "models": [{"name": "m", "checkpoint": "m.pt"}],
            "calibration": [{"label": "real", "source": "builtin"}]}
    with pytest.raises(ConfigError, match=r"st\.yaml: key 'seed': got -1, allowed range is \[0, inf\]"):
        config_from_dict(StudyConfig, data, source="st.yaml")
    assert not (tmp_path / "s").exists()


def test_a_stage_without_its_settings_record_is_rebuilt(finished, tmp_path):
    """A finished stage whose config.yaml is gone cannot be compared with the settings now: it used to be read
    back unchecked (whatever the settings had become); it is rebuilt like a stage with a missing file."""
    src, ckpt = finished
    out = copy_study(src, tmp_path)
    (out / STAGE / "config.yaml").unlink()
    said: list[str] = []
    run_study(_cfg(out, ckpt, calib_size=4), say=said.append)  # a changed setting the record would have shown
    assert any(line.startswith(f"rebuilding {STAGE}: marked finished, but") and "config.yaml is missing" in line
               for line in said), said
    from qfair.runs import RunDir

    assert RunDir(out / STAGE).read_config()["config"]["quant"]["calib_size"] == 4


def test_a_stage_built_from_a_stage_that_is_rebuilt_is_rebuilt(tmp_path):
    """Removing a PTQ stage's marker rebuilds it; the KD stage built from the old PTQ model used to be read
    back, beside a PTQ model it was not built from."""
    root = tmp_path / "b"
    root.mkdir()
    out, ckpt = build_finished(root)
    ft = {"enabled": True, "bits": [8], "start_from": "real", "steps": 1, "images": 4, "batch_size": 4}
    run_study(_cfg(out, ckpt, finetune=ft), say=lambda m: None)
    (out / ".stages" / f"{STAGE}.done").unlink()
    said: list[str] = []
    run_study(_cfg(out, ckpt, finetune=ft), say=said.append)
    rebuilt = f"rebuilding {STAGE}-kd: marked finished, but built from {STAGE}"
    assert any(line.startswith(rebuilt) for line in said), said
    assert not any(f"{STAGE}-kd " in line and "(resumed)" in line for line in said), said


def test_calib_size_does_not_touch_a_calibration_with_its_own_size(tmp_path):
    """``calibration: [{..., size: 8}]`` calibrates on 8 images whatever ``calib_size`` says (in the demo, the
    costly data-free synthesis): changing calib_size used to refuse (or, with --recompute, rebuild) it."""
    root = tmp_path / "b"
    root.mkdir()
    out, ckpt = build_finished(root)
    own = [{"label": "real", "source": "builtin", "size": 8}]
    run_study(_cfg(out, ckpt, calibration=own), say=lambda m: None)  # the same 8 images: read back
    said: list[str] = []
    run_study(_cfg(out, ckpt, calibration=own, calib_size=16), say=said.append)
    assert any(line.startswith(f"[2/2] {STAGE}") and "(resumed)" in line for line in said), said
    with pytest.raises(ConfigError, match=rf"{STAGE}: calibration.size: 8 -> 4"):  # its own size still counts
        run_study(_cfg(out, ckpt, calibration=[{**own[0], "size": 4}]), say=lambda m: None)
