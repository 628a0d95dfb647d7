"""Training checkpoints: atomic, loadable with ``torch.load(weights_only=True)``, complete for resume.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects, so loading can
never run code): model / head / projection / optimizer / grad-scaler state dicts, the schedule step,
the data position (epoch, next batch), the fairness weighter, the best evaluation so far, and the
RNG states of torch (CPU and CUDA), numpy and Python ``random`` -- converted to tensors, because
numpy arrays and Python tuples of 625 ints are not what a weights-only loader should accept.
Writes go through ``atomic_torch_save`` (temporary file + rename): a SIGKILL during a save leaves the
previous ``last.pt`` intact.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.errors import CheckpointError, QfairError
from ..utils.io import atomic_torch_save, safe_torch_load

FORMAT = "qfair-train-checkpoint"
VERSION = 1
# what to do when a run's last checkpoint cannot be used
_RESTART = "Start the run again in a new --out folder (or delete its checkpoints/ folder to restart it from step 0)"


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class fork_rng:
    """Context manager: code inside may use any RNG; the global RNG states are restored on exit.

    Used around periodic evaluation (bootstrap intervals draw random numbers) so that evaluating
    does not change the training trajectory.
    """

    def __enter__(self) -> None:
        self._state = rng_state()

    def __exit__(self, *exc: object) -> None:
        set_rng_state(self._state)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a training state (a dict of tensors / plain values)."""
    doc = {"format": FORMAT, "version": VERSION, **state}
    return atomic_torch_save(doc, path, mkdir=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights-only: tensors and plain types)."""
    try:
        doc = safe_torch_load(path)
    except QfairError as exc:
        raise CheckpointError(f"cannot resume: {str(exc).rstrip('.')}. {_RESTART}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qfair training checkpoint (no '{FORMAT}' header), so the run cannot "
                              f"be resumed from it. {_RESTART}")
    if int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: written by a newer qfair (checkpoint version {doc['version']}); upgrade")
    return doc


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Any) -> None:
    """Strict ``load_state_dict`` whose error names the checkpoint and the keys (or shapes) that differ."""
    if state is None:
        raise CheckpointError(f"{path}: the checkpoint holds no {what} state, but this run has a {what}; resume with "
                              "the same model and config, or start a new --out folder")
    have = module.state_dict()
    missing, unexpected = _diff(have, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the {what} state does not match this run (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "resume with the same model and config, or start a new --out folder")
    shapes = [f"{k} {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} here" for k, v in have.items()
              if isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor) and v.shape != state[k].shape]
    if shapes:
        raise CheckpointError(f"{path}: the {what} state does not match this run ({'; '.join(shapes[:3])}"
                              f"{f'; {len(shapes)} tensors in all' if len(shapes) > 3 else ''}); resume with the same "
                              "model and config, or start a new --out folder")
    module.load_state_dict(state)


def _diff(have: dict[str, Any], got: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(have) - set(got)), sorted(set(got) - set(have))
