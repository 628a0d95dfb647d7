"""``qfair models``: the registered face backbones."""
from __future__ import annotations

import argparse


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
    rows = [[n, ", ".join(sorted(aliases.get(n, []))), (MODELS.get(n).__doc__ or "").strip().splitlines()[0]]
            for n in MODELS.names()]
    console().print(table("registered architectures", ["name", "aliases", "description"], rows))
    return 0
