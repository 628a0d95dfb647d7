"""Periodic evaluation: best checkpoint kept, training trajectory untouched, per-group results logged."""
import json

import numpy as np
import pytest
import torch
from train_tiny import tiny_data, tiny_pair

from qfair.train import IndexedSource, fit
from qfair.train.checkpoint import load_checkpoint
from qfair.train.evaluation import SCORES, group_evaluator

KW = dict(steps=6, lr=0.05, eval_every=2, log_every=1, hflip=True)


def _source():
    images, labels, groups = tiny_data()
    return IndexedSource(images, labels, groups, batch_size=8, seed=1, hflip=True)


def test_best_checkpoint_and_rng_isolation(tmp_path):
    torch.set_num_threads(1)
    scores = iter([0.2, 0.9, 0.5])

    def noisy_eval(model):  # consumes every RNG, like bootstrap intervals would
        torch.rand(3), np.random.rand(3), __import__("random").random()
        assert not model.training
        return next(scores), {"accuracy": {"a": 1.0}}

    student, teacher = tiny_pair()
    res = fit(student, teacher, _source(), out_dir=tmp_path, evaluator=noisy_eval, **KW)
    plain, teacher2 = tiny_pair()
    fit(plain, teacher2, _source(), **KW)
    for a, b in zip(student.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)  # evaluating changed nothing in the training run
    assert res.best["score"] == 0.9 and res.best["step"] == 4
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 4 and set(best["student"]) == set(student.state_dict())
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    assert [e["step"] for e in evals] == [2, 4, 6]


def test_scores_direction():
    d = {"accuracy": {"a": 90.0, "b": 80.0}, "avg": 85.0, "std": 7.07, "ser": 2.0, "to": 77.93}
    assert SCORES["avg"](d) == 85.0 and SCORES["min"](d) == 80.0 and SCORES["to"](d) == 77.93
    assert SCORES["std"](d) == -7.07 and SCORES["ser"](d) == -2.0
    assert SCORES["ser"]({**d, "ser": float("inf")}) == float("-inf")


@pytest.mark.slow
def test_group_evaluator_on_the_builtin_benchmark():
    from qfair.eval import evaluate
    from qfair.models import create_model

    ev = group_evaluator("builtin:tiny", "to")
    torch.manual_seed(0)
    model = create_model("iresnet18", width=4, num_features=16).eval()
    score, details = ev(model)
    ref = evaluate(model, ev.vset, n_bootstrap=0)
    assert set(details["accuracy"]) == set(ref.groups) and len(ref.groups) == 4
    for g in ref.groups:
        assert details["accuracy"][g] == pytest.approx(ref.per_group[g]["accuracy"])
    assert score == pytest.approx(ref.fairness.avg - ref.fairness.std)
