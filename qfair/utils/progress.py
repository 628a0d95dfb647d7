"""Progress reporting that library code can use without owning the terminal.

``track(iterable, description, total)`` shows a rich progress bar on stderr when it is a terminal
or when QFAIR_PROGRESS=1, and is silent otherwise (tests, pipes) unless QFAIR_PROGRESS=1.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    env = os.environ.get("QFAIR_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false")
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from iterable
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.console import Console

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                  transient=False) as prog:
        task = prog.add_task(description, total=total)
        for item in iterable:
            yield item
            prog.advance(task)
