"""torch.distributed helpers: launch detection (torchrun env), device choice, reductions.

``qfair qat`` / ``qfair distill`` started with ``torchrun --nproc-per-node N -m qfair ...`` find
RANK / WORLD_SIZE / LOCAL_RANK in the environment and join the process group (NCCL on CUDA, gloo on
CPU). Every rank runs the same loop on its shard of each global batch (``Batch.shard``); DDP averages
the gradients; activation ranges are synchronised by ``ranges.synced_ranges``; rank 0 writes logs and
checkpoints.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a 1-process info."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = backend or ("nccl" if use_cuda else "gloo")
        try:
            dist.init_process_group(backend)
        except (ValueError, RuntimeError) as exc:  # env:// rendezvous: a variable missing, a port in use...
            from ..utils.errors import ConfigError

            need = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
            raise ConfigError(
                f"WORLD_SIZE={world} asks for {world} processes, but joining the {backend} process group failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r})"
                f"{'; not set: ' + ', '.join(need) if need else ''}. Launch with torchrun --nproc-per-node N -m "
                "qfair ..., which sets them, or unset WORLD_SIZE for one process") from None
    return dist_info()


def shutdown() -> None:
    """Leave the process group joined by :func:`init_from_env` (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA exists, else cpu."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..utils.errors import ConfigError

        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu or auto")
    if dev.type == "cuda" and info.active and dev.index is None:
        dev = torch.device(f"cuda:{info.local_rank}")
    return dev


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process); returns ``t``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def ranks_flagging(flag: bool, device: torch.device | str = "cpu", group: object = None) -> int:
    """How many processes of ``group`` passed ``flag=True`` (``int(flag)`` in one process).

    A collective: every process must call it at the same point, each with its own flag (e.g. "my activations
    hold NaN / Inf"), so that they all learn of a problem seen by one of them and stop together instead of one
    process raising while the others wait in their next collective until the process group times out.
    ``device``: where the flag travels (a CUDA device under NCCL; the tensor being checked's device)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
        return int(bool(flag))
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return round(float(t.item()))


def main_then_others(on_main: Callable[[], T], on_others: Callable[[], T] | None = None, *, what: str,
                     device: torch.device | str = "cpu") -> T | None:
    """Run ``on_main`` in process 0, then (once it succeeded) ``on_others`` in every other process.

    Replaces "rank 0 works, then barrier()": when process 0 raises, a barrier would leave the others waiting
    until the process group times out. Here the processes agree (:func:`ranks_flagging`) whether process 0
    failed: it raises its own error, and every other process raises one that says so and names ``what`` (e.g.
    "building the teacher cache"). Returns what the function run in this process returned (None where none
    ran). In one process: ``on_main()``."""
    info = dist_info()
    result: T | None = None
    error: BaseException | None = None
    if info.main:
        try:
            result = on_main()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other processes learn of it
            error = exc
    failed = ranks_flagging(error is not None, device)
    if error is not None:
        raise error
    if failed:
        from ..utils.errors import QfairError

        raise QfairError(f"process 0 failed while {what} (its error is in its output); this process "
                         f"(rank {info.rank}) stops too. Fix that error and start again")
    if not info.main and on_others is not None:
        result = on_others()
    return result


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
