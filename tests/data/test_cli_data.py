"""The data commands (`qfair synth`, `qfair groups`) and their config files."""
from pathlib import Path

import pytest
import torch

from qfair.cli import main
from qfair.config import load_config
from qfair.data.config import GroupsConfig, SynthConfig
from qfair.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_configs_load():
    cfg = load_config(SynthConfig, ROOT / "configs" / "synth.yaml", {"model": "m.pth", "out": "x"})
    assert cfg.iters == 30 and cfg.source == "bn"
    assert load_config(GroupsConfig, ROOT / "configs" / "groups.yaml", {}).data == "builtin"
    with pytest.raises(ConfigError, match="--model"):
        load_config(SynthConfig, None, {"out": "x"})


def test_synth_builtin_synthetic(tmp_path):
    assert main(["synth", "--source", "builtin-synthetic", "--n", "3", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("synth_*.png"))) == 3 and (tmp_path / "s" / "_contact_sheet.png").is_file()


def test_synth_warns_about_images_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "s"
    (out / "person").mkdir(parents=True)
    (out / "person" / "me.jpg").write_bytes(b"not read")  # would be calibrated on by --calib-data s
    assert main(["synth", "--source", "builtin-synthetic", "--n", "2", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "also holds 1 image(s) synth did not write (person/me.jpg)" in text
    assert main(["synth", "--source", "builtin-synthetic", "--n", "2", "--out", str(tmp_path / "t")]) == 0
    assert "did not write" not in capsys.readouterr().out  # its own images and the sheet are not foreign


def test_synth_from_checkpoint(tmp_path):
    from qfair.models import create_model

    m = create_model("mbf")
    torch.save(m.state_dict(), tmp_path / "mbf.pth")
    rc = main(["synth", "--model", str(tmp_path / "mbf.pth"), "--arch", "mbf", "--n", "2", "--iters", "1",
               "--batch-size", "2", "--out", str(tmp_path / "o")])
    assert rc == 0 and len(list((tmp_path / "o").glob("*.png"))) == 3


def test_synth_refuses_architecture_name(tmp_path, capsys):
    assert main(["synth", "--model", "mbf", "--n", "1", "--out", str(tmp_path)]) == 2
    assert "architecture name" in capsys.readouterr().err


def test_groups_train_then_estimate(tmp_path, capsys):
    from qfair.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("mbf").state_dict(), tmp_path / "m.pth")
    base = ["--model", str(tmp_path / "m.pth"), "--arch", "mbf", "--head", str(tmp_path / "g.pt"), "--batch-size", "16"]
    assert main(["groups", "estimate", *base, "--data", "builtin-synthetic"]) == 2
    assert "groups train" in capsys.readouterr().err
    assert main(["groups", "train", *base, "--n", "48", "--epochs", "2"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["groups", "estimate", *base, "--data", "builtin-synthetic", "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "GroupA" in out and "composition" in out


def _unwrapped(capsys) -> str:
    """stderr with the console's line wrapping undone."""
    return capsys.readouterr().err.replace("\n", "")


def test_bad_output_paths_fail_before_any_work(tmp_path, capsys, monkeypatch):
    import qfair.cli.synth as synth_cli

    def no_work(*a, **kw):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(synth_cli, "load_face_model", no_work)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["synth", "--model", "m.pth", "--n", "1", "--out", str(afile)]) == 2
    assert f"{afile}: it exists and is not a folder" in _unwrapped(capsys)
    assert afile.read_text() == "keep"
    assert main(["groups", "train", "--model", "m.pth", "--data", "builtin", "--head", str(tmp_path)]) == 2
    assert f"cannot write {tmp_path}: it is a directory" in _unwrapped(capsys)
