"""Regressions from an audit of qfair qat / distill / kd_finetune as a demanding user: bad inputs are clear errors
that say what to do, resume refuses what it cannot continue, logs and run folders are never mixed up."""
import json
import warnings

import pytest
import torch
from train_tiny import Tiny, tiny_data, tiny_pair

from qfair.cli import main
from qfair.train import IndexedSource, TeacherCache, fit, kd_finetune
from qfair.train.checkpoint import load_module_state, save_checkpoint
from qfair.train.config import DistillConfig, QatConfig, TrainConfig
from qfair.utils.errors import CheckpointError, ConfigError, DataError

RUN = dict(steps=4, lr=0.05, checkpoint_every=2, log_every=1)


def _source(groups=True, names=("a", "b", "c")):
    images, labels, g = tiny_data()
    return IndexedSource(images, labels, g if groups else None, batch_size=8, seed=5, hflip=True,
                         group_names=list(names) if names else None)


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- metrics log and resume
def test_a_fresh_run_does_not_append_to_the_log_of_a_run_that_failed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n{"step"')
    student, teacher = tiny_pair()
    fit(student, teacher, _source(), out_dir=tmp_path, **RUN)
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]  # was [1, 2, 1, 2, 3, 4] after a cut line


def test_resume_refuses_other_settings_but_allows_logging_changes(tmp_path):
    student, teacher = tiny_pair()
    fit(student, teacher, _source(), out_dir=tmp_path, **{**RUN, "steps": 2})
    with pytest.raises(CheckpointError, match=r"lr: 0\.05 -> 0\.5"):  # was silently continued with lr 0.5
        fit(*tiny_pair(), _source(), out_dir=tmp_path, resume=True, **{**RUN, "steps": 2, "lr": 0.5})
    res = fit(*tiny_pair(), _source(), out_dir=tmp_path, resume=True, **{**RUN, "steps": 2, "log_every": 5})
    assert res.resumed_from == 2


def test_resume_into_a_model_of_other_shapes_names_the_tensors(tmp_path):
    student, teacher = Tiny(8), Tiny(8)
    fit(student, teacher, _source(), out_dir=tmp_path, **RUN)
    with pytest.raises(CheckpointError, match=r"fc\.weight \(8, 196\) in the checkpoint, \(16, 196\) here"):
        fit(Tiny(16), Tiny(16), _source(), out_dir=tmp_path, resume=True, **RUN)  # was a RuntimeError
    with pytest.raises(CheckpointError, match="holds no head state"):  # was TypeError: 'NoneType' ...
        load_module_state(torch.nn.Linear(2, 2), None, "head", tmp_path / "checkpoints/last.pt")


def test_metrics_log_truncation_skips_lines_that_are_not_records(tmp_path):
    from qfair.train.monitor import MetricsLog

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n5\n[1, 2]\n{"nostep": 1}\n{"step": 3}\n{"ste')
    MetricsLog(p).truncate_after(2)
    assert p.read_text() == '{"step": 1}\n'


# ---------------------------------------------------------------------------- divergence
def test_nan_loss_names_the_step_as_the_log_counts_it():
    student, teacher = tiny_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "converting a tensor with requires_grad" warning on the way
        with pytest.raises(DataError, match=r"diverged at step 1: the loss became nan.*new --out"):
            kd_finetune(student, teacher, torch.full((8, 3, 16, 16), float("nan")), steps=2, batch_size=4)


def test_divergence_of_a_quantized_student_is_a_training_error_not_a_calibration_error():
    from qfair.quant import QuantConfig, quantize

    student, teacher = tiny_pair()
    images, _, _ = tiny_data(n=16)
    q = quantize(student, QuantConfig(bits=6), [(images.float() / 255 - 0.5) / 0.5])
    with pytest.raises(DataError, match="training diverged at step") as err:  # was QuantError "... calibration"
        kd_finetune(q, teacher, images, steps=6, batch_size=8, lr=1e30, range_update_steps=6)
    assert "calibration" not in str(err.value)


# ---------------------------------------------------------------------------- user batches
def test_margin_head_on_a_list_of_labelled_batches_is_sized_from_their_labels():
    student, teacher = tiny_pair()
    images, labels, _ = tiny_data(n=16)
    x = (images.float() / 255 - 0.5) / 0.5
    batches = [(x[:8], labels[:8]), (x[8:], labels[8:])]
    res = kd_finetune(student, teacher, batches, steps=2, margin="arcface", log_every=1)  # was "has no labels"
    assert all(r["margin"] > 0 for r in res.history)
    with pytest.raises(ConfigError, match="set num_classes"):
        kd_finetune(student, teacher, iter(batches), steps=2, margin="arcface")
    with pytest.raises(DataError, match="outside the margin head's 3 classes"):  # was an index error
        kd_finetune(student, teacher, iter(batches), steps=2, margin="arcface", num_classes=3)
    with pytest.raises(DataError, match="this batch has none"):  # the margin loss was skipped silently
        kd_finetune(student, teacher, iter([x[:8]]), steps=1, margin="arcface", num_classes=6)


def test_a_one_shot_iterator_that_runs_out_says_so():
    student, teacher = tiny_pair()
    with pytest.raises(DataError, match="iterator, which can be read only once"):
        kd_finetune(student, teacher, (torch.zeros(4, 3, 16, 16) for _ in range(2)), steps=3)


def test_fair_kd_without_group_labels_is_an_error_not_plain_kd():
    student, teacher = tiny_pair()
    with pytest.raises(ConfigError, match="group label per training image"):  # group names only: was plain KD
        fit(student, teacher, _source(groups=False), fair_kd=True, **RUN)
    x = torch.zeros(4, 3, 16, 16)
    with pytest.raises(DataError, match="fair_kd needs group labels, and this batch has none"):
        fit(student, teacher, [x, x], group_names=["a", "b"], fair_kd=True, steps=2, lr=0.01)
    with pytest.raises(ConfigError, match="kd_weight is 0"):
        fit(student, teacher, [x], fair_kd=True, kd_weight=0.0, steps=1)
    with pytest.raises(ConfigError, match="nothing to train"):
        TrainConfig(kd_weight=0.0)


def test_epoch_milestones_need_data_of_known_length():
    student, teacher = tiny_pair()
    batches = (torch.zeros(4, 3, 16, 16) for _ in range(10))
    with pytest.raises(ConfigError, match="milestone_unit: step"):  # epochs were silently taken as steps
        fit(student, teacher, batches, steps=3, lr=0.01, schedule="step", milestones=(2,))


def test_a_damaged_teacher_cache_is_rebuilt(tmp_path):
    teacher = Tiny().eval()
    src = _source()
    cache = TeacherCache.build(teacher, src, tmp_path)
    (path,) = tmp_path.glob("teacher-*.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged"):
        again = TeacherCache.build(teacher, src, tmp_path)
    assert torch.equal(again.plain, cache.plain)


# ---------------------------------------------------------------------------- qat / distill entry points
def test_qat_arch_applies_to_model_and_teacher_arch_to_teacher(tmp_path):
    from qfair.runs import RunDir
    from qfair.train.api import _qat_teacher

    cfg = QatConfig(model="mbf.pt", arch="mobilefacenet", teacher="r18.pt")
    assert _qat_teacher(cfg) == ("r18.pt", None, "--teacher-arch", "")  # was ("r18.pt", "mobilefacenet")
    assert _qat_teacher(QatConfig(model="mbf.pt", arch="mobilefacenet"))[:2] == ("mbf.pt", "mobilefacenet")
    RunDir.create(tmp_path / "w6", {"model": "float.pt", "arch": "r18"}, command="qfair quantize")
    path, arch, flag, origin = _qat_teacher(QatConfig(student=str(tmp_path / "w6")))
    assert (path, arch, flag) == ("float.pt", "r18", "--teacher-arch") and "w6/config.yaml" in origin


def test_load_errors_name_the_option_of_that_model(tmp_path):
    from qfair.models import create_model
    from qfair.train.api import load_teacher

    torch.save(create_model("iresnet18", width=4, num_features=16).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match="pass --student-arch iresnet18") as err:
        load_teacher(str(tmp_path / "r18.pt"), "mobilefacenet", what="student_init", arch_flag="--student-arch")
    assert "student_init" in str(err.value) and "--arch " not in str(err.value)


@pytest.fixture
def quantize_run(tmp_path):
    from qfair.runs import RunDir

    run = tmp_path / "w6"
    RunDir.create(run, {"model": str(tmp_path / "float.pt")}, command="qfair quantize")
    (run / "model.pt").write_bytes(b"weights")
    (run / "quant.json").write_text("{}")
    return run


FAST = ["--steps", "2", "--batch-size", "8", "--data-n", "16"]


def test_a_fresh_qat_never_writes_into_another_run(tmp_path, quantize_run, capsys):
    # --out is the student: its model would be replaced by the fine-tuned one
    assert main(["qat", "--student", str(quantize_run), "--out", str(quantize_run), *FAST]) == 2
    assert "is the student's run folder" in " ".join(capsys.readouterr().err.split())
    # --out holds a quantize run (was overwritten: model.pt, quant.json and config.yaml replaced)
    assert main(["qat", "--model", "t.pt", "--out", str(quantize_run), *FAST]) == 2
    assert "holds a `qfair quantize` run" in " ".join(capsys.readouterr().err.split())
    assert (quantize_run / "model.pt").read_bytes() == b"weights"
    # --resume of a run of another command
    assert main(["distill", "--teacher", "t.pt", "--out", str(quantize_run), "--resume", *FAST]) == 2
    assert "not a `qfair distill` run" in " ".join(capsys.readouterr().err.split())


def test_resume_checks_the_checkpoint_before_loading_anything(tmp_path, capsys):
    from qfair.runs import RunDir

    out = tmp_path / "run"
    cfg = QatConfig(model=str(tmp_path / "missing.pt"), steps=2, batch_size=8, data_n=16)
    RunDir.create(out, cfg, command="qfair qat")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04cut short")
    assert main(["qat", "--model", str(tmp_path / "missing.pt"), "--out", str(out), "--resume", *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot resume" in err and "new --out" in err and "missing.pt" not in err  # before the teacher load
    save_checkpoint(out / "checkpoints" / "last.pt", {"step": 1})
    assert main(["qat", "--model", str(tmp_path / "missing.pt"), "--out", str(out), "--resume", *FAST,
                 "--lr", "0.3"]) == 2
    assert "lr: None -> 0.3" in " ".join(capsys.readouterr().err.split())


def test_distributed_launch_errors_are_clear(monkeypatch):
    import qfair.train.api as api
    from qfair.train.distributed import DistInfo, init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="not set: MASTER_ADDR, MASTER_PORT.*torchrun"):  # was a ValueError
        init_from_env("gloo")
    monkeypatch.setattr(api, "dist_info", lambda: DistInfo(0, 2, 0))
    with pytest.raises(ConfigError, match="cannot be split evenly over 2 processes"):
        api._check_world(7)
    api._check_world(8)


def test_config_help_texts():
    import dataclasses

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(QatConfig)}
    assert "--teacher" in helps["teacher_arch"]
    assert "labels" in helps["margin"] and "when labels exist" not in helps["margin"]
    assert DistillConfig(teacher="t.pt").teacher_cache == "auto"


def test_training_data_errors_name_the_data_setting():
    from qfair.train.data import load_train_images
    from qfair.utils.errors import QfairError

    with pytest.raises(QfairError, match=r"training data 'csv:foo' \(--data / --mix-data\): unknown data source"):
        load_train_images("csv:foo", 8)  # was "unknown calibration source"
    images, _, _ = tiny_data(n=4)
    with pytest.raises(DataError, match="lower batch_size .* or use more images"):
        IndexedSource(images, batch_size=8)


def test_distill_student_init_of_another_embedding_size_is_refused(tmp_path):
    from qfair.models import create_model
    from qfair.train.api import distill

    torch.save(create_model("iresnet18", width=4, num_features=16).state_dict(), tmp_path / "r18.pt")
    cfg = DistillConfig(teacher=str(tmp_path / "r18.pt"), student_init=str(tmp_path / "r18.pt"), student_arch="r18",
                        embedding_size=32, steps=1, batch_size=8, data_n=16)
    with pytest.raises(ConfigError, match="embeds in 16-d, but --embedding-size is 32"):  # was silently 16-d
        distill(cfg, tmp_path / "d")
    assert not (tmp_path / "d").exists()
