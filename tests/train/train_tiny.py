"""Tiny models and data for the training tests (seconds on one CPU core); importable by subprocesses."""
import torch
from torch import nn


class Tiny(nn.Module):
    """(B, 3, 16, 16) -> (B, dim): conv, BN, PReLU, linear."""

    def __init__(self, dim=8):
        super().__init__()
        self.embedding_size = dim
        self.conv = nn.Conv2d(3, 4, 3, 2)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.PReLU(4)
        self.fc = nn.Linear(4 * 7 * 7, dim)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def tiny_data(n=48, classes=6, groups=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return images, labels, labels % groups


def tiny_pair(seed=0, dim=8):
    torch.manual_seed(seed)
    teacher = Tiny(dim)
    student = Tiny(dim)
    return student, teacher


def free_port() -> int:
    """A free local TCP port for a gloo process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int, timeout: float = 60) -> None:
    """Join a ``world``-process gloo group on ``port`` (one torch thread: 2 processes on a 2-core machine)."""
    import datetime
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))


def spawn_two_ranks(worker, out, *args) -> list:
    """Run ``worker(rank, 2, port, str(out), *args)`` in 2 gloo processes; each saves ``out/rank{rank}.pt``,
    returned as [rank 0's, rank 1's] (loaded weights-only)."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, free_port(), str(out), *args), nprocs=2, join=True)
    return [torch.load(f"{out}/rank{r}.pt", weights_only=True) for r in (0, 1)]
