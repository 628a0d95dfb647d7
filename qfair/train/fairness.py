"""Fairness-aware distillation: weight the KD loss toward the groups that drift most from the teacher.

None of the reference systems has this (issue 7). Per group g the weighter keeps a running mean L_g
of the per-sample distillation loss (EMA with ``momentum``; the first observation initialises it).
Group weights are ``w_g = (L_g / mean_h L_h) ** gamma``, renormalised so that their mean over the
groups seen so far is 1; gamma = 0 gives plain (unweighted) distillation. A sample's weight is the
weight of its group, or ``sum_g p_ig w_g`` for soft labels (a group classifier's probabilities), and
the batch's sample weights are then scaled to mean 1 (over all ranks under DDP): fairness weighting
moves KD strength between groups without changing the total, so on imbalanced data (a majority group
that drifts little) it does not also lower the KD weight and the learning rate it acts with.

Group labels arrive per sample as (B,) int64 (-1 = unknown: weight 1, not counted) or (B, G) float
probabilities. Under DDP the per-group sums are all-reduced before the update so every rank keeps
the same weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def group_weights(running: torch.Tensor, seen: torch.Tensor, gamma: float) -> torch.Tensor:
    """(G,) running losses, (G,) bool seen -> (G,) weights with mean 1 over the seen groups (1 elsewhere)."""
    w = torch.ones_like(running)
    if int(seen.sum()) == 0:
        return w
    ref = running[seen].mean()
    if float(ref) <= 0:
        return w
    raw = (running[seen].clamp_min(0) / ref).pow(gamma)
    w[seen] = raw / raw.mean()
    return w


def group_sums(per_sample: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) losses and (B,) int or (B, G) soft groups -> ((G,) loss sums, (G,) counts or mass)."""
    per_sample = per_sample.detach().float()
    if groups.dim() == 2:
        p = groups.float().to(per_sample.device)
        return p.t() @ per_sample, p.sum(dim=0)
    g = groups.long().to(per_sample.device)
    ok = (g >= 0) & (g < num_groups)
    sums = torch.zeros(num_groups, device=per_sample.device).index_add_(0, g[ok], per_sample[ok])
    counts = torch.zeros(num_groups, device=per_sample.device).index_add_(0, g[ok], torch.ones_like(per_sample[ok]))
    return sums, counts


class GroupKDWeighter:
    """Running per-group KD loss and the sample weights derived from it (state is checkpointed)."""

    def __init__(self, group_names: Sequence[str], gamma: float = 1.0, momentum: float = 0.9,
                 enabled: bool = True) -> None:
        self.group_names = list(group_names)
        self.gamma, self.momentum, self.enabled = float(gamma), float(momentum), bool(enabled)
        n = len(self.group_names)
        self.running = torch.zeros(n)
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.last: dict[str, float] = {}  # per-group mean KD loss of the last batch (for logging)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def weights(self) -> torch.Tensor:
        """(G,) current group weights (all ones when disabled)."""
        if not self.enabled:
            return torch.ones(self.num_groups)
        return group_weights(self.running, self.seen, self.gamma)

    def sample_weights(self, groups: torch.Tensor, reduce=None) -> torch.Tensor:
        """(B,) int or (B, G) soft groups -> (B,) weights from the state BEFORE this batch's update, with
        mean 1 over the batch (``reduce`` all-reduces (sum) the batch's total and size across ranks)."""
        w = self.weights().to(groups.device)
        if groups.dim() == 2:
            out = groups.float() @ w
        else:
            g = groups.long()
            out = torch.ones(g.shape, device=g.device)
            ok = (g >= 0) & (g < self.num_groups)
            out[ok] = w[g[ok]]
        if not self.enabled:
            return out
        total = torch.stack([out.sum(), torch.tensor(float(out.numel()), device=out.device)])
        if reduce is not None:
            reduce(total)
        return out * (total[1] / total[0]) if float(total[0]) > 0 else out

    def update(self, per_sample: torch.Tensor, groups: torch.Tensor, reduce=None) -> None:
        """Fold a batch's per-sample KD losses into the running means; ``reduce`` all-reduces (sum)."""
        sums, counts = group_sums(per_sample, groups, self.num_groups)
        if reduce is not None:
            both = torch.cat([sums, counts])
            reduce(both)
            sums, counts = both[: self.num_groups], both[self.num_groups:]
        sums, counts = sums.cpu(), counts.cpu()
        present = counts > 0
        batch_mean = torch.where(present, sums / counts.clamp_min(1e-12), torch.zeros_like(sums))
        self.last = {self.group_names[i]: float(batch_mean[i]) for i in range(self.num_groups) if present[i]}
        first = present & ~self.seen
        again = present & self.seen
        self.running[first] = batch_mean[first]
        self.running[again] = self.momentum * self.running[again] + (1 - self.momentum) * batch_mean[again]
        self.seen |= present

    def log_dict(self) -> dict[str, dict[str, float]]:
        w = self.weights()
        return {
            "kd_group": dict(self.last),
            "kd_group_running": {n: float(self.running[i]) for i, n in enumerate(self.group_names) if self.seen[i]},
            "kd_group_weight": {n: float(w[i]) for i, n in enumerate(self.group_names)},
        }

    def state_dict(self) -> dict:
        return {"running": self.running.clone(), "seen": self.seen.clone(), "group_names": list(self.group_names)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["group_names"]) != self.group_names:
            from ..utils.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint groups {state['group_names']} differ from this run's groups {self.group_names}")
        self.running = state["running"].clone().float()
        self.seen = state["seen"].clone().bool()
