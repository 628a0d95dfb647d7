"""Optimizer and learning-rate schedule of the reference recipes (README references [5], [6]).

SGD with Nesterov momentum 0.9 and weight decay 5e-4; the learning rate is scaled linearly with the
total batch (all ranks together): ``lr = base_lr * total_batch / base_batch`` -- 0.1 at 512 (QuantFace
QAT, 4 x 128) and 0.025 at 128 (the distillation study) are the same rule. The schedule is a pure
function of the step (:func:`lr_at`), so resuming needs only the step number.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..utils.registry import Registry

SCHEDULES: Registry = Registry("lr schedule")


def scaled_lr(base_lr: float, total_batch: int, base_batch: int = 512) -> float:
    """Linear scaling rule: lr for ``total_batch`` given ``base_lr`` at ``base_batch``."""
    return float(base_lr) * float(total_batch) / float(base_batch)


@SCHEDULES.register("constant")
def _constant(step: int, total: int, milestones: Sequence[int], gamma: float, min_ratio: float) -> float:
    return 1.0


@SCHEDULES.register("step", aliases=("multistep",))
def _step(step: int, total: int, milestones: Sequence[int], gamma: float, min_ratio: float) -> float:
    """Multiply by ``gamma`` at every milestone step already reached."""
    return gamma ** sum(1 for m in milestones if step >= m)


@SCHEDULES.register("cosine")
def _cosine(step: int, total: int, milestones: Sequence[int], gamma: float, min_ratio: float) -> float:
    total = max(total, 0)
    t = min(max(step, 0), total) / max(total, 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


_cosine.after_warmup = True  # type: ignore[attr-defined]  # its steps count from the end of the warm-up


def lr_at(step: int, *, lr: float, total_steps: int, schedule: str = "constant", milestones: Sequence[int] = (),
          gamma: float = 0.1, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up over ``warmup_steps``, then the schedule.

    ``constant`` and ``step`` count steps from 0 (milestones are absolute; the warm-up ramp multiplies
    them). ``cosine`` starts after the warm-up, as arcface_torch's PolyScheduler does for its poly decay:
    the ramp reaches ``lr`` at step ``warmup_steps - 1``, and the cosine then falls from ``lr`` at step
    ``warmup_steps`` to ``min_lr_ratio * lr`` at step ``total_steps`` (without warm-up: from step 0)."""
    fn = SCHEDULES.get(schedule)
    if warmup_steps > 0 and getattr(fn, "after_warmup", False):
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        return lr * fn(step - warmup_steps, total_steps - warmup_steps, milestones, gamma, min_lr_ratio)
    factor = fn(step, total_steps, milestones, gamma, min_lr_ratio)
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return lr * factor


def make_sgd(params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
             nesterov: bool = True) -> torch.optim.SGD:
    """SGD as in the reference recipes (foreach off: identical arithmetic on every platform)."""
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0, foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
