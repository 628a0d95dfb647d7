"""Checkpoints: RNG states round trip, weights-only loading, clear errors; the teacher cache."""
import random

import numpy as np
import pytest
import torch
from train_tiny import Tiny, tiny_data

from qfair.train.batches import IndexedSource
from qfair.train.checkpoint import fork_rng, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from qfair.train.teacher import TeacherCache, check_pair
from qfair.utils.errors import CheckpointError, ConfigError


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    random.gauss(0, 1)  # python random keeps a cached gaussian: part of the state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(), "step": 7})
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], random.gauss(0, 1))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ck = torch.load(tmp_path / "c.pt", weights_only=True)  # plain torch, weights only
    set_rng_state(ck["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], random.gauss(0, 1))
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2:] == got[2:]


def test_fork_rng_restores_every_generator():
    torch.manual_seed(0)
    with fork_rng():
        torch.rand(10), np.random.rand(3), random.random()
    a = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand(2))


def test_bad_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qfair training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"format": "qfair-train-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")


def test_teacher_cache_matches_teacher_forward_and_keys_on_weights(tmp_path):
    torch.manual_seed(0)
    teacher = Tiny().eval()
    images, _, _ = tiny_data(n=12)
    src = IndexedSource(images, batch_size=4, seed=0, hflip=True)
    cache = TeacherCache.build(teacher, src, tmp_path, batch_size=5)
    for batch in src.epoch(0):
        with torch.no_grad():
            want = torch.nn.functional.normalize(teacher(batch.images), dim=1)
        assert torch.allclose(cache.lookup(batch.index, batch.flipped), want, atol=1e-6)
    again = TeacherCache.build(teacher, src, tmp_path)
    assert again.key == cache.key and len(list(tmp_path.glob("teacher-*.pt"))) == 1
    with torch.no_grad():
        teacher.fc.bias.add_(1.0)
    other = TeacherCache.build(teacher, src, tmp_path)
    assert other.key != cache.key and len(list(tmp_path.glob("teacher-*.pt"))) == 2


def test_check_pair():
    check_pair(Tiny(8), Tiny(8))
    with pytest.raises(ConfigError, match="projection"):
        check_pair(Tiny(4), Tiny(8))
    check_pair(Tiny(4), Tiny(8), torch.nn.Linear(4, 8))
    with pytest.raises(ConfigError):
        check_pair(Tiny(4), Tiny(8), torch.nn.Linear(5, 8))
