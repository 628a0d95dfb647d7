"""Generate argparse flags from a config dataclass, so flags and YAML keys always mirror each other.

Every top-level field ``foo_bar`` becomes ``--foo-bar``; booleans are real switches
(``--flag/--no-flag``). Defaults are ``None`` so the resolver knows which flags were given and lets
them override the config file. Nested dataclass fields are YAML-only.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, Union, get_args, get_origin


def _scalar_type(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else str
    if origin is Literal:
        return type(get_args(tp)[0])
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per top-level field of ``cls`` (see module docstring)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group("settings (also valid as keys of a --config YAML file)")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(_scalar_type(tp)):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, (tuple, list)):  # as typed on the command line: --batches 1 16 64
            default = " ".join(map(str, default)) if default else None
        if default not in (None, ""):
            help_ = f"{help_} (default: {default})" if help_ else f"default: {default}"
        choices = f.metadata.get("choices")
        if callable(choices):
            choices = None  # validated later with a clear message
        origin = get_origin(_strip_optional(tp))
        base = _scalar_type(tp)
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin in (list, tuple):
            item = get_args(_strip_optional(tp))
            item_tp = _scalar_type(item[0]) if item else str
            group.add_argument(flag, dest=f.name, nargs="+", type=item_tp, default=None, help=help_)
        else:
            group.add_argument(flag, dest=f.name, type=base if base in (int, float, str) else str,
                               default=None, help=help_)


def _strip_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (non-None)."""
    out = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name) and getattr(args, f.name) is not None:
            value = getattr(args, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse names the flag in the error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {n}")
    return n


def check_output_arg(parser: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    """Exit through ``parser.error`` naming ``flag`` when ``path`` cannot be written, before a long run
    (benchmark scripts in tools/)."""
    if path is None:
        return
    from ..utils.errors import QfairError
    from ..utils.io import output_file

    try:
        output_file(path, mkdir=True)
    except (QfairError, OSError) as exc:
        parser.error(f"{flag} {path}: {exc}")
