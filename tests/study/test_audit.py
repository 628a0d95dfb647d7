"""Study config audit: every mistake a study YAML can hold is refused at load (or before any stage runs) with
the file, the key and what to do; ``qfair study --dry-run`` lists exactly the stages a run runs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from qfair.config import load_config
from qfair.study import StudyConfig
from qfair.study.config import _ASSETS, check_paths, demo_config
from qfair.study.plan import plan
from qfair.utils.errors import ConfigError, DataError

DEMO = str(_ASSETS / "demo_mobilefacenet.pt")
BASE = {
    "name": "t", "out": "out",
    "models": [{"name": "m", "checkpoint": DEMO, "arch": "mobilefacenet"}],
    "bench": ["builtin:tiny"], "bits": [8, 6],
    "calibration": [{"label": "real", "source": "builtin"}, {"label": "synthetic", "source": "builtin-synthetic"}],
}


def _load(tmp_path: Path, **patch) -> StudyConfig:
    data = copy.deepcopy(BASE)
    data["out"] = str(tmp_path / "out")
    data.update(patch)
    p = tmp_path / "st.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_config(StudyConfig, p)


@pytest.mark.parametrize("patch, match", [
    ({"bits": [8, 6, 8]}, r"st\.yaml: bits: 8 is listed twice"),
    ({"recipes": ["quantface", "quantface"]}, r"st\.yaml: recipes: 'quantface' is listed twice"),
    ({"bench": ["builtin:tiny", "builtin:tiny"]}, r"st\.yaml: bench: 'builtin:tiny' is listed twice"),
    ({"finetune": {"bits": [6, 6], "start_from": "synthetic"}}, r"finetune\.bits: 6 is listed twice"),
    ({"export": {"bits": [8, 8]}}, r"export\.bits: 8 is listed twice"),
    ({"export": {"calibration": ["real", "real"]}}, r"export\.calibration: 'real' is listed twice"),
    ({"recipes": []}, r"st\.yaml: recipes: a study needs at least one recipe"),
    ({"bench": []}, r"st\.yaml: bench: a study needs at least one benchmark"),
    ({"finetune": {"bits": [], "start_from": "synthetic"}}, r"finetune\.bits: empty while finetune\.enabled"),
    ({"export": {"bits": []}}, r"export\.bits: empty while export\.enabled"),
    ({"export": {"calibration": []}}, r"export\.calibration: empty while export\.enabled"),
    ({"observer": "minmaxx"}, r"st\.yaml:\d+: key 'observer': got 'minmaxx'.*Did you mean 'minmax'"),
    ({"ptq": ["brecqq"]}, r"st\.yaml:\d+: key 'ptq': got 'brecqq'.*Did you mean 'brecq'"),
    ({"out": ""}, r"st\.yaml: out: empty"),
    ({"models": [{"name": "m", "checkpoint": DEMO, "arch": "resnet9000"}]},
     r"st\.yaml: models\[0\]\.arch \(name m\): unknown model 'resnet9000'.*leave arch out"),
    ({"calibration": [{"label": "real", "source": "builtin"}, {"label": "a/b", "source": "builtin"}]},
     r"st\.yaml: calibration\[1\]\.label: 'a/b' names folders"),
    ({"calibration": [{"label": "", "source": "builtin"}], "finetune": {"enabled": False},
      "export": {"enabled": False}}, r"calibration\[0\]\.label: '' names folders"),
    # two different stages in one folder: PTQ of 'real-deploy' (quantface) and the export's deploy PTQ of 'real'
    ({"bits": [8], "finetune": {"enabled": False},
      "calibration": [{"label": "real", "source": "builtin"}, {"label": "real-deploy", "source": "builtin"}]},
     r"variant 'm-w8a8-real-deploy' names two different stages"),
])
def test_config_mistakes_are_refused_at_load_naming_file_and_key(tmp_path, patch, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, **patch)


def test_recipe_spelling_is_canonical_so_folders_do_not_split(tmp_path):
    cfg = _load(tmp_path, recipes=["QuantFace"], export={"recipe": "Deploy"})
    assert cfg.recipes == ("quantface",) and cfg.export.recipe == "deploy"
    assert [v.id for v in plan(cfg)] == [v.id for v in plan(_load(tmp_path))]


def test_float_only_study_and_observer_alias_still_load(tmp_path):
    cfg = _load(tmp_path, bits=[], finetune={"enabled": False}, export={"enabled": False}, observer="ema")
    assert [v.kind for v in plan(cfg)] == ["float"]


def test_every_missing_path_is_listed_with_where_relative_paths_are_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _load(tmp_path, models=[{"name": "a", "checkpoint": "ck/a.pth"}, {"name": "b", "checkpoint": "builtin:x"}],
                calibration=[{"label": "real", "source": "real:data/train.rec"},
                             {"label": "synthetic", "source": "builtin-synthetic"}])
    with pytest.raises(DataError) as err:
        check_paths(cfg, "st.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("st.yaml: ") for line in lines)
    assert "models[0] (name a): checkpoint ck/a.pth not found" in lines[0]
    assert f"relative paths are read from {tmp_path}" in lines[0]
    assert lines[1].startswith("st.yaml: models[1].checkpoint: unknown built-in model 'builtin:x'")
    assert "calibration[0] (label real): data/train.rec: data path not found" in lines[2]


def test_shipped_study_configs_fail_on_their_data_not_their_config(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    shipped = sorted((root / "configs").glob("study_*.yaml"))
    assert shipped
    for p in shipped:
        cfg = load_config(StudyConfig, p)  # the config itself is valid
        with pytest.raises(DataError, match=r"checkpoint .* not found \(relative paths are read from"):
            check_paths(cfg, str(p))


def test_demo_unknown_model_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--model: unknown demo model 'nope'; shipped: .*mobilefacenet"):
        demo_config(model="nope")


def test_demo_config_is_unchanged_by_the_new_checks():
    ids = [v.id for v in plan(demo_config())]
    assert ids == ["mobilefacenet-fp32", "mobilefacenet-w8a8-real", "mobilefacenet-w8a8-synthetic",
                   "mobilefacenet-w8a8-data-free", "mobilefacenet-w6a6-real", "mobilefacenet-w6a6-synthetic",
                   "mobilefacenet-w6a6-data-free", "mobilefacenet-w6a6-synthetic-kd",
                   "mobilefacenet-w8a8-real-deploy", "mobilefacenet-w8a8-real-deploy-onnx"]


def test_dry_run_lists_what_the_run_runs_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import torch

    from qfair.cli import main
    from qfair.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), ckpt)
    data = copy.deepcopy(BASE)
    data.update(out=str(tmp_path / "out"), bits=[8], calib_size=4, calib_batch_size=4,
                models=[{"name": "m", "checkpoint": str(ckpt), "arch": "iresnet18"}],
                calibration=[{"label": "real", "source": "builtin"}], finetune={"enabled": False},
                export={"enabled": False}, eval={"flip": False, "n_bootstrap": 5, "null_draws": 0})
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(data))
    argv = ["study", "--config", str(tmp_path / "st.yaml")]
    assert main(argv + ["--dry-run"]) == 0
    dry = [ln.split()[:2] for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert dry == [["[1/2]", "m-fp32"], ["[2/2]", "m-w8a8-real"]]
    assert not (tmp_path / "out").exists()
    assert main(argv) == 0
    ran = [ln.split()[:2] for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert ran == dry
    assert main(argv + ["--dry-run"]) == 0
    assert "(finished)" in capsys.readouterr().out.splitlines()[-2]
