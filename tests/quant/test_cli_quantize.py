"""`qfair quantize` / `qfair sensitivity` end to end on a tiny model; configs load."""
import json
from pathlib import Path

import pytest
import torch

import qfair.data
from qfair.cli import main
from qfair.config import load_config
from qfair.cli.sensitivity import SensitivityRunConfig
from qfair.quant.config import QuantizeRunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def calib(monkeypatch):
    """Stand-in for qfair.data.calibration_batches (records its arguments)."""
    calls = []

    def fake(source, n, batch_size, model=None, seed=0, **kw):
        calls.append((source, n, batch_size))
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(min(batch_size, n - i), 3, 112, 112, generator=g) * 2 - 1 for i in range(0, n, batch_size)]

    monkeypatch.setitem(vars(qfair.data), "calibration_batches", fake)
    return calls


@pytest.fixture
def ckpt(tmp_path):
    from qfair.models import create_model

    p = tmp_path / "r18.pth"
    torch.save(create_model("iresnet18", width=8).state_dict(), p)
    return p


def test_quantize_writes_run_dir(ckpt, tmp_path, calib, capsys):
    out = tmp_path / "run"
    rc = main(["quantize", "--model", str(ckpt), "--bits", "6", "--abits", "8", "--calib", "synthetic",
               "--calib-size", "8", "--calib-batch-size", "4", "--recipe", "deploy", "--observer", "percentile",
               "--skip", "fc", "--out", str(out)])
    assert rc == 0
    for f in ("config.yaml", "model.pt", "quant.json", "report.md"):
        assert (out / f).exists(), f
    doc = json.loads((out / "quant.json").read_text())
    assert doc["wbits"] == 6 and doc["abits"] == 8 and doc["recipe"] == "deploy" and doc["float_kept"] == ["fc"]
    assert calib == [("synthetic", 8, 4)]
    text = capsys.readouterr().out
    assert "deploy W6A8" in text and "fc" in text
    from qfair.quant import load_quantized

    q = load_quantized(out)
    assert q.qfair_quant["calib_images"] == 8


def test_quantize_config_file_and_flag_override(ckpt, tmp_path, calib):
    out, faces = tmp_path / "run", tmp_path / "faces"
    faces.mkdir()  # exists (the calibration itself is faked by the calib fixture)
    rc = main(["quantize", "--config", str(CONFIGS / "quantface_w6a6.yaml"), "--model", str(ckpt), "--calib-size",
               "4", "--calib", "real", "--calib-data", str(faces), "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "quant.json").read_text())
    assert doc["wbits"] == 6 and doc["recipe"] == "quantface"
    assert calib[0][0] == f"real:{faces}"


@pytest.mark.parametrize("argv,msg", [
    (["--model", "iresnet18", "--out", "X"], "allow-random"),
    (["--model", "MODEL", "--bits", "9", "--out", "X"], "[2, 8]"),
    (["--model", "MODEL", "--observer", "minmix", "--out", "X"], "percentile"),
    (["--model", "MODEL", "--recipe", "trt", "--out", "X"], "deploy"),
    (["--model", "MODEL", "--calib", "real", "--out", "X"], "calib-data"),
    (["--model", "MODEL", "--calib", "real", "--calib-data", "/no/such/faces", "--out", "X"],
     "--calib-data /no/such/faces: no such file or folder"),
    (["--model", "MODEL"], "--out"),
])
def test_bad_input(argv, msg, ckpt, tmp_path, calib, capsys):
    argv = [str(ckpt) if a == "MODEL" else (str(tmp_path / "o") if a == "X" else a) for a in argv]
    assert main(["quantize", *argv]) == 2
    assert msg in capsys.readouterr().err.replace("\n", " ")


def test_allow_random_registry_model(tmp_path, calib):
    assert main(["quantize", "--model", "mobilefacenet", "--allow-random", "--calib-size", "2", "--out",
                 str(tmp_path / "r")]) == 0


def test_sensitivity_cli(ckpt, tmp_path, calib):
    out = tmp_path / "sens"
    rc = main(["sensitivity", "--model", str(ckpt), "--bits", "4", "--calib-size", "4", "--granularity", "block",
               "--top", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "sensitivity.json").read_text())
    drifts = [r["drift"] for r in res["units"]]
    assert drifts == sorted(drifts, reverse=True) and "layer1.0" in [r["unit"] for r in res["units"]]
    import yaml

    snippet = yaml.safe_load((out / "overrides.yaml").read_text())
    cfg = QuantizeRunConfig(**{k: v for k, v in snippet.items()})
    assert len(cfg.layer_wbits) == 2 and set(cfg.layer_wbits.values()) == {8}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("quant*.yaml")) + sorted(CONFIGS.glob("deploy_*.yaml")),
                         ids=lambda p: p.name)
def test_configs_load(path):
    cls = SensitivityRunConfig if "sensitivity" in path.name else QuantizeRunConfig
    cfg = load_config(cls, path)
    assert 2 <= cfg.wbits <= 8


def test_quantize_skip_corrupt_calibration_images(ckpt, tmp_path, capsys):
    import numpy as np

    from qfair.data.preprocess import encode_png

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        (d / f"img{i}.png").write_bytes(encode_png(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
    (d / "img6.png").write_bytes(b"not a png")
    args = ["quantize", "--model", str(ckpt), "--arch", "iresnet18", "--bits", "8", "--calib", "real",
            "--calib-data", str(d), "--calib-size", "7", "--calib-batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "img6.png" in err and "--skip-corrupt" in err
    with pytest.warns(UserWarning, match="skipped 1 corrupt images; calibrating on 6"):
        assert main([*args, "--skip-corrupt", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "quant.json").read_text())["calib_images"] == 6
