"""Checks of the fine-tuning loop (:func:`qfair.train.fit`): what may be resumed, divergence messages, labels
and groups of the user's batches. Each raises (or words) an error that says what was wrong and what to do."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import config_to_dict
from ..utils.errors import CheckpointError, DataError, NonFiniteError
from .config import TrainConfig


_KEEP_ON_RESUME = ("log_every", "checkpoint_every", "eval_every", "device")  # do not change the trajectory


def check_same_settings(ck: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A checkpoint continues only the run it was written by: refuse settings that would change its course."""
    saved = ck.get("config")
    if not isinstance(saved, dict):  # older checkpoints did not record it
        return
    now = config_to_dict(cfg)
    diff = sorted(k for k in set(saved) | set(now) if k not in _KEEP_ON_RESUME and saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
        raise CheckpointError(f"{path}: cannot resume with other settings than the run was started with ({shown}"
                              f"{'...' if len(diff) > 6 else ''}); resume with the same settings, or start a new "
                              "out_dir / --out folder")


def diverged(step: int, what: str) -> str:
    return (f"training diverged at step {step + 1}: {what}. Lower the learning rate (lr / --lr, or base_lr) or check "
            "the data (images normalised to [-1, 1]?), and start again in a new --out folder; checkpoints already "
            "written were left as they were")


def single_pass(source: Any) -> bool:
    batches = getattr(source, "batches", None)
    try:
        return batches is not None and iter(batches) is batches
    except TypeError:
        return False


def check_labels(batch: Any, head: nn.Module, step: int) -> None:
    """A margin head needs an identity label per sample (-1 = unlabelled, skipped) within its classes."""
    if batch.labels is None:
        raise DataError(f"step {step + 1}: the margin head needs identity labels, and this batch has none; give "
                        "(images, labels) batches, or set margin to none for KD only")
    classes = getattr(head, "weight", None)
    if classes is not None and len(batch.labels) and int(batch.labels.max()) >= classes.shape[0]:
        raise DataError(f"step {step + 1}: identity label {int(batch.labels.max())} is outside the margin head's "
                        f"{classes.shape[0]} classes; raise num_classes (or set 0 to size the head from the labels)")


def diverged_in_layer(exc: Exception) -> str | None:
    """"NaN or Inf reached the <role> of layer '<name>'" for a quantizer's NonFiniteError, else None (with "in
    N other process(es)" when another process's input was the bad one)."""
    if not isinstance(exc, NonFiniteError):
        return None
    where = f" in {exc.processes} other process(es)" if getattr(exc, "processes", 0) else ""
    return f"NaN or Inf reached the {exc.role} of layer '{exc.layer}'{where}"


def labels_of_batches(batches: Any) -> list[torch.Tensor] | None:
    """The label tensors of a list / tuple of user batches ([] when they have none); None for an iterator."""
    if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes)):
        return None
    out = []
    for item in batches:
        lab = item.get("labels") if isinstance(item, dict) else getattr(item, "labels", None)
        if isinstance(item, (tuple, list)) and len(item) > 1:
            lab = item[1]
        if lab is not None:
            out.append(torch.as_tensor(lab).long().reshape(-1))
    return [t for t in out if t.numel()]
