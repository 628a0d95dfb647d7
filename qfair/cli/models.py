"""``qfair models``: the registered face backbones."""
from __future__ import annotations

import argparse
import inspect
import re


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered face backbone architectures",
                       description="List the registered face backbones (names accepted by --arch).")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import MODELS
    from ._console import console, table

    aliases: dict[str, list[str]] = {}
    for alias, name in MODELS.aliases().items():
        aliases.setdefault(name, []).append(alias)
    rows = []
    for n in sorted(MODELS.names(), key=_natural):
        doc = inspect.cleandoc(MODELS.get(n).__doc__ or "").replace("``", "")
        paras = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
        args_ = next((p.removeprefix("Arguments: ") for p in paras if p.startswith("Arguments:")), "")
        rows.append([n, ", ".join(sorted(aliases.get(n, []))), paras[0] if paras else "", args_])
    console().print(table("registered architectures", ["name", "aliases", "description", "arguments (default)"],
                          rows))
    return 0


def _natural(name: str) -> list:
    """iresnet18 before iresnet100: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
