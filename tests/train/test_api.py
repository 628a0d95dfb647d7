"""qfair qat / qfair distill end to end on tiny iresnets and the built-in data; configs; early errors."""
import json
from pathlib import Path

import pytest
import torch

from qfair.cli import main
from qfair.config import load_config
from qfair.models import create_model
from qfair.train.config import DistillConfig, QatConfig
from qfair.utils.errors import CheckpointError, ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["--steps", "3", "--batch-size", "8", "--data-n", "16", "--log-every", "1"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("qat_*.yaml")), ids=lambda p: p.name)
def test_qat_configs_load(path):
    cfg = load_config(QatConfig, path, {"model": "teacher.pt"})
    assert 2 <= cfg.wbits <= 8 and cfg.grad_clip == 5.0 and cfg.base_lr == 0.1 and cfg.base_batch == 512


def test_default_qat_config_is_the_reference_recipe():
    cfg = load_config(QatConfig, CONFIGS / "qat_kd_w6a6.yaml", {"model": "t.pt"})
    assert (cfg.wbits, cfg.abits, cfg.kd_loss, cfg.margin, cfg.range_update_steps) == (6, 6, "mse", "none", 300)
    assert cfg.momentum == 0.9 and cfg.nesterov and cfg.weight_decay == 5e-4 and cfg.batch_size == 512


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("distill_*.yaml")), ids=lambda p: p.name)
def test_distill_configs_load(path):
    cfg = load_config(DistillConfig, path, {"teacher": "teacher.pt"})
    assert cfg.kd_weight == 10000.0 and cfg.milestones == (8, 14, 20, 25) and cfg.epochs == 26
    assert cfg.base_lr * cfg.batch_size / cfg.base_batch == pytest.approx(0.025)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd_los: mse\n")
    with pytest.raises(ConfigError, match="kd_loss"):
        load_config(QatConfig, bad, {"model": "t.pt"})
    with pytest.raises(ConfigError, match="student"):
        QatConfig()
    with pytest.raises(ConfigError, match="milestones"):
        QatConfig(model="t.pt", schedule="step")


def _save(tmp_path, name="teacher.pt", dim=32, width=8, seed=0):
    torch.manual_seed(seed)
    m = create_model("iresnet18", width=width, num_features=dim)
    torch.save(m.state_dict(), tmp_path / name)
    return str(tmp_path / name)


def test_qat_cli_end_to_end_and_resume(tmp_path, capsys):
    teacher = _save(tmp_path)
    out = tmp_path / "run"
    args = ["qat", "--config", str(CONFIGS / "qat_kd_w6a6.yaml"), "--model", teacher, "--out", str(out),
            "--calib-n", "8", "--range-update-steps", "2", "--checkpoint-every", "2", *FAST]
    assert main(args) == 0
    for f in ("config.yaml", "model.pt", "quant.json", "train.json", "metrics.jsonl", "checkpoints/last.pt"):
        assert (out / f).exists(), f
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 3 and summary["quant"]["wbits"] == 6
    from qfair.quant import load_quantized

    q = load_quantized(out)
    assert q(torch.zeros(2, 3, 112, 112)).shape == (2, 32)
    # resuming with changed settings is refused before any work (a finished run's resume: test_resume.py)
    assert main(args + ["--resume", "--lr", "0.5"]) == 2
    assert "settings differ" in " ".join(capsys.readouterr().err.split())


def test_a_teacher_that_does_not_load_stops_before_training(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    out = tmp_path / "never"
    assert main(["qat", "--model", str(broken), "--arch", "r18", "--out", str(out), *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "could not be loaded" in err and "did not start" in err
    assert not out.exists()
    from qfair.train.api import load_teacher

    with pytest.raises(CheckpointError):
        load_teacher(str(tmp_path / "missing.pt"), "r18")


def test_embedding_sizes_must_match_without_projection(tmp_path):
    from qfair.train.api import distill, qat

    teacher = _save(tmp_path, "t16.pt", dim=16)
    with pytest.raises(ConfigError, match="projection"):
        distill(DistillConfig(teacher=teacher, student_arch="iresnet18", embedding_size=32, steps=1, batch_size=4,
                              student_kwargs={"width": 4},
                              data_n=8), tmp_path / "d")
    assert not (tmp_path / "d").exists()
    student_src = _save(tmp_path, "s32.pt", dim=32)
    with pytest.raises(ConfigError, match="16-d"):
        qat(QatConfig(model=student_src, teacher=teacher, steps=1, batch_size=4, data_n=8, calib_n=4),
            tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_distill_with_projection_quantization_and_cached_teacher(tmp_path):
    from qfair.train.api import distill

    teacher = _save(tmp_path, dim=32)
    cfg = DistillConfig(teacher=teacher, student_arch="iresnet18", embedding_size=16, projection=True,
                        student_kwargs={"width": 4},
                        quantize=True, wbits=8, abits=8, steps=2, batch_size=8, data_n=16, margin="adaface",
                        kd_weight=100.0, range_update_steps=1, log_every=1)
    s = distill(cfg, tmp_path / "d")
    out = tmp_path / "d"
    assert s["steps"] == 2 and (out / "projection.pt").exists() and (out / "quant.json").exists()
    caches = list((out / "teacher_cache").glob("teacher-*.pt"))
    assert len(caches) == 1 and s["teacher_cache"] in caches[0].name
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["margin"] > 0 and r["kd"] > 0 for r in rec)


def test_a_fresh_run_never_overwrites_checkpoints_and_resume_needs_a_run(tmp_path, capsys):
    from qfair.train.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    (out / "config.yaml").parent.mkdir()
    (out / "config.yaml").write_text("config: {}\n")
    save_checkpoint(out / "checkpoints" / "last.pt", {"step": 3, "done": False})
    args = ["qat", "--model", str(tmp_path / "t.pt"), "--out", str(out), *FAST]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{out} holds a run at step 3" in err and "--resume" in err and "another --out" in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3
    new = tmp_path / "new"
    assert main(["qat", "--model", str(tmp_path / "t.pt"), "--out", str(new), "--resume", *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"nothing to resume in {new}" in err and not new.exists()


def test_ctrl_c_tells_how_to_resume(tmp_path, capsys, monkeypatch):
    import qfair.train.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(qfair.train.api, "qat", interrupted)
    monkeypatch.setattr(qfair.train.api, "distill", interrupted)
    out = str(tmp_path / "run")
    assert main(["qat", "--model", "t.pt", "--out", out, "--steps", "3"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert f"qfair qat --model t.pt --out {out} --steps 3 --resume" in err and "rerun the same command" not in err
    assert main(["distill", "--teacher", "t.pt", "--out", out, "--resume"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert f"qfair distill --teacher t.pt --out {out} --resume" in err and "--resume --resume" not in err


def _labelled_sources(tmp_path):
    """The same 16 faces of 4 identities (sparse ids 100/205/310/999) as a .rec and as an identity folder."""
    import numpy as np
    from PIL import Image

    from qfair.data import write_recordio

    rng = np.random.default_rng(0)
    ids = [100, 205, 310, 999] * 4
    imgs = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in ids]
    (tmp_path / "rec").mkdir()
    write_recordio(tmp_path / "rec" / "train.rec", list(zip(imgs, ids)), fmt="png")
    for i, (im, k) in enumerate(zip(imgs, ids)):
        (tmp_path / "folder" / f"id{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "folder" / f"id{k}" / f"{i}.png")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(flat / f"{i}.png")
    return tmp_path / "rec", tmp_path / "folder", flat


def test_identity_labels_of_real_data_reach_the_margin_head(tmp_path):
    from qfair.train.api import distill
    from qfair.train.data import load_train_images

    rec, folder, flat = _labelled_sources(tmp_path)
    for src in (rec, folder):
        t = load_train_images(f"real:{src}", 16)
        assert t.labels is not None and sorted(t.labels.unique().tolist()) == [0, 1, 2, 3]  # contiguous ids
    assert load_train_images(f"real:{flat}", 16).labels is None
    teacher = _save(tmp_path, dim=32)
    cfg = dict(teacher=teacher, student_arch="iresnet18", embedding_size=32, student_kwargs={"width": 4},
               steps=2, batch_size=8, data_n=16, margin="arcface", log_every=1)
    distill(DistillConfig(**cfg, data=f"real:{rec}"), tmp_path / "d")
    rec_log = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert rec_log and all(r["margin"] > 0 for r in rec_log)  # the margin loss ran on every step
    # unlabelled data with a margin head: an error before training, even with num_classes set
    for extra in ({}, {"num_classes": 100}):
        with pytest.raises(ConfigError, match="needs identity labels, and the training data has none"):
            distill(DistillConfig(**cfg, **extra, data=f"real:{flat}"), tmp_path / f"e{len(extra)}")


def test_distill_names_student_arch_for_an_unknown_architecture_before_loading_the_teacher(tmp_path):
    from qfair.train import DistillConfig, distill

    cfg = DistillConfig(teacher=str(tmp_path / "missing.pt"), student_arch="mobilefacenett", steps=1)
    with pytest.raises(ConfigError, match=r"--student-arch \(student_arch\): unknown model 'mobilefacenett'\. "
                                          r"Did you mean 'mobilefacenet'\?"):
        distill(cfg, tmp_path / "d")  # the teacher path is not even looked at
    assert not (tmp_path / "d").exists()
