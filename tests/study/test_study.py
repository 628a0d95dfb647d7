"""The study pipeline: planning, config errors, and a tiny end-to-end run that resumes."""
from __future__ import annotations

import json

import pytest
import torch

from qfair.config import config_from_dict
from qfair.study import StudyConfig, run_study
from qfair.study.plan import plan
from qfair.utils.errors import ConfigError


def _cfg(tmp_path, ckpt, **kw) -> StudyConfig:
    data = {
        "name": "tiny", "out": str(tmp_path / "study"), "seed": 0,
        "models": [{"name": "tiny", "checkpoint": str(ckpt), "arch": "iresnet18"}],
        "bench": ["builtin:tiny"], "bits": [8, 6],
        "calibration": [{"label": "real", "source": "builtin"}, {"label": "synthetic", "source": "builtin-synthetic"}],
        "calib_size": 8, "calib_batch_size": 4,
        "finetune": {"enabled": True, "bits": [6], "start_from": "synthetic", "images": 8, "steps": 2,
                     "batch_size": 4, "range_update_steps": 1},
        "export": {"enabled": True, "bits": [8], "calibration": ["real"], "recipe": "deploy"},
        "eval": {"flip": False, "batch_size": 32, "n_bootstrap": 20},
    }
    data.update(kw)
    return config_from_dict(StudyConfig, data, source="test")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from qfair.models import create_model

    torch.manual_seed(0)
    m = create_model("iresnet18", width=8, num_features=32)
    p = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(m.state_dict(), p)
    return p


def test_plan_covers_the_matrix(tmp_path, tiny_ckpt):
    ids = [v.id for v in plan(_cfg(tmp_path, tiny_ckpt))]
    assert ids == ["tiny-fp32", "tiny-w8a8-real", "tiny-w8a8-synthetic", "tiny-w6a6-real", "tiny-w6a6-synthetic",
                   "tiny-w6a6-synthetic-kd", "tiny-w8a8-real-deploy", "tiny-w8a8-real-deploy-onnx"]
    kd = [v for v in plan(_cfg(tmp_path, tiny_ckpt)) if v.kind == "kd"][0]
    assert kd.parent == "tiny-w6a6-synthetic" and kd.calib_label == "synthetic + KD"


def test_config_errors_name_the_key(tmp_path, tiny_ckpt):
    with pytest.raises(ConfigError, match="finetune.start_from"):
        _cfg(tmp_path, tiny_ckpt, finetune={"start_from": "nope"})
    with pytest.raises(ConfigError, match="calib_sise"):
        _cfg(tmp_path, tiny_ckpt, calib_sise=3)
    with pytest.raises(ConfigError, match="at least one model"):
        _cfg(tmp_path, tiny_ckpt, models=[])


def test_demo_and_shipped_study_configs_load():
    from pathlib import Path

    from qfair.config import load_config
    from qfair.study.config import _ASSETS

    assert load_config(StudyConfig, _ASSETS / "study_demo.yaml").synthetic_benchmark
    for p in sorted((Path(__file__).resolve().parents[2] / "configs").glob("study_*.yaml")):
        load_config(StudyConfig, p)


def test_tiny_study_end_to_end_and_resume(tmp_path, tiny_ckpt):
    cfg = _cfg(tmp_path, tiny_ckpt)
    lines: list[str] = []
    res = run_study(cfg, say=lines.append)
    names = [r.name for r in res.results]
    assert names == [v.id for v in plan(cfg)]
    report = (res.out / "report.md").read_text()
    assert "tiny-w6a6-synthetic-kd" in report and "W6A6" in report
    metrics = json.loads((res.out / "metrics.json").read_text())
    assert len(metrics["results"]) == len(names) and len(metrics["comparisons"]) == len(names) - 1
    assert (res.out / "tiny-w8a8-real-deploy-onnx" / "model.onnx").exists()
    first = {r.name: r.accuracies() for r in res.results}
    # rerun: every stage is read back, nothing rebuilt, same numbers
    lines2: list[str] = []
    res2 = run_study(cfg, say=lines2.append)
    assert all("(resumed)" in line for line in lines2[1:])
    assert not any(k.startswith("tiny-w") for k in res2.timings)
    assert {r.name: r.accuracies() for r in res2.results} == first


def test_demo_quick_runs_the_shipped_model(tmp_path, capsys):
    """`qfair demo --quick`: the shipped demo model and every stage wired through the CLI."""
    from qfair.cli import main
    from qfair.study.config import builtin_models

    assert {"mobilefacenet", "iresnet18w16"} <= set(builtin_models())
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "mobilefacenet-w6a6-synthetic-kd" in out and "ONNX Runtime" in out
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "SYNTHETIC benchmark" in report


def test_shipped_demo_model_has_a_measurable_group_disparity():
    """Evaluated here, not read from a record: best and worst group intervals do not overlap."""
    from qfair.eval import evaluate
    from qfair.models import load_model
    from qfair.study.config import _ASSETS

    model = load_model(_ASSETS / "demo_mobilefacenet.pt", arch="mobilefacenet")
    res = evaluate(model, "builtin", flip=False, n_bootstrap=0)
    groups = res.per_group
    best = max(groups.values(), key=lambda g: g["accuracy"])
    worst = min(groups.values(), key=lambda g: g["accuracy"])
    assert worst["accuracy_ci"][1] < best["accuracy_ci"][0], res.accuracies()
