"""Learning-rate rule and schedules (README references [5], [6])."""
import math

import pytest
import torch

from qfair.train.optim import SCHEDULES, lr_at, make_sgd, scaled_lr


def test_linear_scaling_matches_both_reference_recipes():
    assert scaled_lr(0.1, 512, 512) == pytest.approx(0.1)  # QuantFace: 4 x 128
    assert scaled_lr(0.1, 128, 512) == pytest.approx(0.025)  # distillation study at batch 128
    assert scaled_lr(0.1, 32, 512) == pytest.approx(0.00625)


def test_step_schedule_and_warmup():
    kw = dict(lr=1.0, total_steps=100, schedule="step", milestones=[10, 20], gamma=0.1)
    assert [lr_at(s, **kw) for s in (0, 9, 10, 19, 20, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(0, lr=1.0, total_steps=100, warmup_steps=4) == pytest.approx(0.25)
    assert lr_at(3, lr=1.0, total_steps=100, warmup_steps=4) == pytest.approx(1.0)


def test_cosine_schedule():
    kw = dict(lr=2.0, total_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(2.0)
    assert lr_at(5, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(10, **kw) == pytest.approx(0.2)
    assert lr_at(3, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3))))


def test_every_schedule_starts_at_lr():
    for name in SCHEDULES.names():
        assert lr_at(0, lr=0.5, total_steps=10, schedule=name, milestones=[5]) == pytest.approx(0.5)


def test_sgd_is_the_reference_optimizer():
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_sgd([p], 0.1)
    g = opt.param_groups[0]
    assert g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    p.grad = torch.ones(3)
    opt.step()
    # Nesterov first step: buf = g' = g + wd*p; update = g' + 0.9*buf = 1.9 g'
    gp = 1 + 5e-4
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 1.9 * gp))
