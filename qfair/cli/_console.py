"""Rich console helpers shared by the commands (imported lazily by them)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def console():
    import sys

    from rich.console import Console

    # Piped output (files, CI logs) gets a wide console so study tables are not folded into 80 columns.
    # soft_wrap: lines of text (paths, the command to rerun) are never broken by inserted newlines (the terminal
    # wraps them), so they can be copied and grepped whole; tables still fit the width.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


@lru_cache(maxsize=1)
def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line, however long


def error(msg: str) -> None:
    from rich.markup import escape

    err_console().print(f"[bold red]error:[/] {escape(msg)}")


def info(msg: str) -> None:
    console().print(msg)


def table(title: str, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):
        numeric = bool(rows) and all(_is_number(r[i]) for r in rows if i < len(r))
        t.add_column(c, justify="right" if numeric and i > 0 else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def _is_number(x: Any) -> bool:
    if isinstance(x, (int, float)):
        return True
    try:
        float(str(x).replace("%", "").replace("±", "").split()[0])
        return True
    except (ValueError, IndexError):
        return False
