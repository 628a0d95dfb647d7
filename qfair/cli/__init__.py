"""The ``qfair`` command line: thin. Each subcommand lives in its own module of this package with
``register(subparsers)`` adding its parser and setting ``func(args) -> int``; the command parses,
loads its config, calls one API function and prints.

Only commands that work are listed in ``COMMANDS``; importing a command module must stay cheap
(heavy imports go inside ``func``).
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module
from typing import Sequence

from .._version import __version__

# Order is the order shown in --help.
COMMANDS: list[str] = [
    "demo",
    "study",
    "models",
    "info",
    "quantize",
    "sensitivity",
    "qat",
    "distill",
    "synth",
    "groups",
    "export",
    "evaluate",
    "compare",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfair",
        description="Compress face recognition models to 8 and 6 bits and measure, group by group, "
        "what the compression did to fairness.",
    )
    parser.add_argument("--version", action="version", version=f"qfair {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = import_module(f"qfair.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"qfair.cli.{name}":
                continue  # command not implemented in this build
            raise
        mod.register(sub)
    _add_debug(parser)
    _repeatable_lists(parser)
    return parser


def _repeatable_lists(parser: argparse.ArgumentParser) -> None:
    """A list flag given twice adds to the list (``--bench a --bench b`` as with ``qfair evaluate``, or
    ``--bench a b``) instead of argparse's silent keeping of the last one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _repeatable_lists(child)
        elif type(action) is argparse._StoreAction and action.nargs == "+":
            action.__class__ = argparse._ExtendAction


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` is accepted before or after any (sub)command; SUPPRESS keeps a subcommand's parser
    from resetting a ``--debug`` given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--debug" in a.option_strings for a in child._actions):
                    child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show full tracebacks on errors")
                _add_debug(child)


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand ``args`` selected (``qfair groups train`` -> its parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs and subs[0].dest else None
        if chosen is None or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def main(argv: Sequence[str] | None = None) -> int:
    from ..utils.errors import QfairError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the (sub)command whose options these are not, with its usage, not the top-level one
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the command records it was run as
    import warnings

    plain = warnings.formatwarning
    if not (args.debug or os.environ.get("QFAIR_DEBUG")):
        warnings.formatwarning = _format_warning  # restored below; recorded warnings (pytest) are not formatted
    try:
        return int(args.func(args) or 0)
    except QfairError as exc:
        if args.debug or os.environ.get("QFAIR_DEBUG"):
            raise
        from ._console import error

        error(str(exc))
        return 2
    except KeyboardInterrupt:
        from ._console import error

        hint = getattr(args, "interrupted", None)  # a command whose resume is not "rerun it" says how
        if hint:
            msg = hint(args, args.argv)
        elif args.command in ("study", "demo"):
            msg = "interrupted; finished stages are kept, rerun the same command to resume"
        else:
            msg = "interrupted; no output was left half-written (files are written atomically); rerun the command"
        error(msg)
        return 130
    finally:
        warnings.formatwarning = plain


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' hook
    """A qfair warning as one line for the user ("warning: ..."), without the file, line and source line that
    Python's default format shows (those are for developers: --debug shows them)."""
    import warnings

    if issubclass(category, UserWarning) and not issubclass(category, (DeprecationWarning, FutureWarning)):
        return f"warning: {message}\n"
    return warnings._formatwarning_orig(message, category, filename, lineno, line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
