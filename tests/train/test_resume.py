"""--resume ends with exactly the weights of an uninterrupted run (CPU, fixed seed, one thread)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_tiny import tiny_data, tiny_pair

from qfair.train import IndexedSource, fit
from qfair.train.checkpoint import load_checkpoint
from qfair.utils.errors import ConfigError

HERE = Path(__file__).parent
SETTINGS = dict(steps=14, lr=0.05, margin="elasticarcface", margin_weight=0.1, fair_kd=True, schedule="step",
                milestones=(6,), milestone_unit="step", warmup_steps=2, checkpoint_every=4, log_every=1)


class _Stop(Exception):
    pass


def _source():
    images, labels, groups = tiny_data()
    return IndexedSource(images, labels, groups, batch_size=8, seed=5, hflip=True, group_names=["a", "b", "c"])


def _run(out, stop_at=None, resume=False):
    student, teacher = tiny_pair()

    def stopper(step, rec):
        if stop_at is not None and step == stop_at:
            raise _Stop

    try:
        res = fit(student, teacher, _source(), out_dir=out, resume=resume, callbacks=[stopper], **SETTINGS)
    except _Stop:
        return student, None
    return student, res


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_stop_and_resume_gives_identical_weights(tmp_path, one_thread):
    ref, _ = _run(tmp_path / "ref")
    _, none = _run(tmp_path / "cut", stop_at=10)  # killed after step 10; last checkpoint at step 8
    assert none is None and load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["step"] == 8
    resumed, res = _run(tmp_path / "cut", resume=True)
    assert res.resumed_from == 8 and res.steps == 14
    _assert_same(ref, resumed)
    # the metrics log reads like one uninterrupted run (steps 9 and 10 logged once)
    steps = [__import__("json").loads(line)["step"] for line in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 15))
    # the whole state is there, loadable weights-only
    ck = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert ck["done"] and ck["step"] == 14 and ck["fair"]["seen"].all() and "rng" in ck
    # resuming a finished run does nothing and keeps the weights
    again, res2 = _run(tmp_path / "cut", resume=True)
    assert res2.steps == 14
    _assert_same(ref, again)


def test_a_different_stop_point_without_resume_differs(tmp_path, one_thread):
    """The equality above is not vacuous: a run that skips its last steps ends elsewhere."""
    ref, _ = _run(tmp_path / "ref")
    short, _ = _run(tmp_path / "short", stop_at=13)
    assert not all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), short.state_dict().values()))


_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
import test_resume as T
from qfair.train import fit
student, teacher = T.tiny_pair()
slow = lambda step, rec: time.sleep(0.15)
fit(student, teacher, T._source(), out_dir={out!r}, resume={resume}, callbacks=[slow], **T.SETTINGS)
"""


def test_sigkill_mid_training_then_resume(tmp_path, one_thread):
    out = str(tmp_path / "killed")
    env = dict(os.environ, OMP_NUM_THREADS="1", QFAIR_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(here=str(HERE), out=out, resume=False)], env=env)
    ckpt = Path(out) / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 4:
                break
            if proc.poll() is not None:
                pytest.fail("the training process ended before it could be killed")
            time.sleep(0.05)
        time.sleep(0.3)  # land somewhere after the checkpoint, mid-training
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(ckpt)["step"]
    assert 4 <= killed_at < 14
    resumed, res = _run(out, resume=True)
    assert res.resumed_from == killed_at
    ref, _ = _run(tmp_path / "ref")
    _assert_same(ref, resumed)


def test_fit_refuses_to_overwrite_a_run_without_resume(tmp_path):
    """The Python API keeps the CLI's promise: a fresh fit() into a folder with checkpoints is an error, and the
    checkpoint is left as it was."""
    student, teacher = tiny_pair()
    fit(student, teacher, _source(), out_dir=tmp_path, steps=4, checkpoint_every=2, log_every=1)
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    student, teacher = tiny_pair()
    with pytest.raises(ConfigError, match=r"holds a fine-tuning run .*resume=True"):
        fit(student, teacher, _source(), out_dir=tmp_path, steps=4, checkpoint_every=2)
    assert last.read_bytes() == before
