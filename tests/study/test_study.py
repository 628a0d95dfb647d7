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


def _small(tmp_path, ckpt, **kw) -> StudyConfig:
    """One PTQ stage, no fine-tuning, no export: the smallest study that has a finished stage."""
    base = {"bits": [8], "calibration": [{"label": "real", "source": "builtin"}],
            "finetune": {"enabled": False}, "export": {"enabled": False},
            "eval": {"flip": False, "batch_size": 32, "n_bootstrap": 0, "null_draws": 0}}
    return _cfg(tmp_path, ckpt, **{**base, **kw})


def test_changed_settings_are_refused_then_recomputed(tmp_path, tiny_ckpt):
    import yaml

    run_study(_small(tmp_path, tiny_ckpt), say=lambda m: None)
    out = tmp_path / "study"
    stage = out / "tiny-w8a8-real"
    assert json.loads((stage / "quant.json").read_text())["calib_images"] == 8
    before = (out / "config.yaml").read_text()
    changed = _small(tmp_path, tiny_ckpt, calib_size=16)
    with pytest.raises(ConfigError, match=r"tiny-w8a8-real: calibration\.size: 8 -> 16[\s\S]*--recompute") as exc:
        run_study(changed, say=lambda m: None, source="st.yaml")
    assert "st.yaml" in str(exc.value) and "new output folder" in str(exc.value)
    # nothing was touched: the study's config.yaml still describes the results in the folder
    assert (out / "config.yaml").read_text() == before
    lines: list[str] = []
    run_study(changed, say=lines.append, recompute=True)
    assert json.loads((stage / "quant.json").read_text())["calib_images"] == 16
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["calib_size"] == 16
    assert any(line.startswith("recomputing tiny-w8a8-real") for line in lines)
    # the rebuilt stage records what it was built with, so the same config resumes it
    lines = []
    run_study(changed, say=lines.append)
    assert "(resumed)" in lines[-1]


def test_missing_data_path_is_reported_before_any_stage(tmp_path, tiny_ckpt):
    from qfair.utils.errors import DataError

    cfg = _small(tmp_path, tiny_ckpt, calibration=[{"label": "real", "source": f"real:{tmp_path}/nonexist"}])
    said: list[str] = []
    with pytest.raises(DataError, match=r"^st\.yaml: calibration\[0\] \(label real\): .*nonexist: data path not found"):
        run_study(cfg, say=said.append, source="st.yaml")
    assert said == [] and not (tmp_path / "study").exists()
    ft = _small(tmp_path, tiny_ckpt, finetune={"enabled": True, "start_from": "real", "data": "real:/nope/x"})
    with pytest.raises(DataError, match=r"finetune\.data: /nope/x: data path not found"):
        run_study(ft, say=said.append)


def test_calibration_entry_typo_names_the_file_and_entry(tmp_path, tiny_ckpt):
    from qfair.config import load_config

    st = tmp_path / "st.yaml"
    st.write_text(f"models: [{{name: m, checkpoint: {tiny_ckpt}}}]\n"
                  "calibration: [{label: real, sorce: builtin}]\n")
    with pytest.raises(ConfigError, match=r"st\.yaml:2: key 'calibration\[0\]\.sorce' is not a CalibSpec setting"):
        load_config(StudyConfig, st)
