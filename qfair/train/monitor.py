"""What a training run shows and writes: a rich progress line and a JSON-lines metrics log.

The progress line (loss, lr, images/s, ETA) goes to stderr only on a terminal or with
QFAIR_PROGRESS=1 (``qfair.utils.progress.enabled``), and only on rank 0. ``metrics.jsonl`` gets one
JSON object per logged step; on resume the lines after the checkpoint's step are dropped so the log
reads like one uninterrupted run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..utils.io import _sanitize, atomic_write_text
from ..utils.progress import enabled as progress_enabled


class MetricsLog:
    """Append-only JSON-lines file (``None`` path: keep records in memory only)."""

    def __init__(self, path: Path | None, keep: int = 1000) -> None:
        self.path, self.keep = path, keep
        self.records: list[dict[str, Any]] = []

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (they belong to the part of a run that is being redone)."""
        if self.path is None or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                at = int(rec["step"])
            except (json.JSONDecodeError, TypeError, KeyError, ValueError):
                continue  # a line cut by a kill (or not a record of this log)
            if at <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def reset(self) -> None:
        """Start an empty log: a new run never appends to the lines of an earlier (failed) one in the folder."""
        self.records.clear()
        if self.path is not None and self.path.exists():
            atomic_write_text(self.path, "")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        del self.records[: -self.keep]
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(_sanitize(record), allow_nan=False) + "\n")


class Progress:
    """A rich progress bar with loss / lr / throughput fields; a no-op when disabled."""

    def __init__(self, total: int, start: int, description: str, active: bool = True) -> None:
        self.total, self.t0, self.s0 = total, time.perf_counter(), start
        self._prog = None
        if active and progress_enabled():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._prog = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
            self._prog.start()
            self._task = self._prog.add_task(description, total=total, completed=start, status="")

    def rates(self, step: int, images: int) -> tuple[float, float]:
        """(images per second since start/resume, ETA in seconds)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        done = max(step - self.s0, 1)
        return images / dt, (self.total - step) * dt / done

    def update(self, step: int, loss: float, lr: float, ips: float) -> None:
        if self._prog is not None:
            self._prog.update(self._task, completed=step,
                              status=f"loss {loss:.4g}  lr {lr:.3g}  {ips:.1f} img/s")

    def close(self) -> None:
        if self._prog is not None:
            self._prog.stop()
            self._prog = None
