"""Config dataclasses: validation of types, ranges and choices, with errors that name the key.

A config is a ``@dataclass(frozen=True)`` whose fields may carry metadata made by :func:`cfg_field`:
``range=(lo, hi)`` (inclusive), ``choices=[...]`` or a ``choices`` callable (a registry's names),
and ``help``. ``config_from_dict`` checks every key against the fields (an unknown key is an error
that lists the keys that exist and the closest one), converts ints to floats where a float is
expected, checks types, ranges and choices (a choice is stored as the field spells it, whatever case it
was given in; NaN, and +-inf where there is a range, are refused unless the field allows them), and
builds nested dataclasses.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar, Union, get_args, get_origin

from ..utils.errors import ConfigError

C = TypeVar("C")
_MISSING = dataclasses.MISSING


def cfg_field(
    default: Any = _MISSING,
    *,
    help: str = "",
    range: tuple[float | None, float | None] | None = None,
    choices: Any = None,
    default_factory: Callable[[], Any] | Any = _MISSING,
    flag: bool = True,
    allow_nan: bool = False,
    allow_inf: bool = False,
) -> Any:
    """A dataclass field with validation metadata. ``choices`` may be a list or a zero-arg callable.

    Float values must not be NaN unless ``allow_nan``; a field with a ``range`` also refuses +-inf
    unless ``allow_inf`` (e.g. inf meaning "no limit"; the range still applies to it)."""
    md = {"help": help, "range": range, "choices": choices, "flag": flag, "allow_nan": allow_nan,
          "allow_inf": allow_inf}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


class _Origin(str):
    """The config file's path (a str, so messages print it as before; "" without a file) that also knows
    which top-level keys came from command-line flags, so an error names the flag, not the file, and on
    which line of the file each key is (``key_lines``), so an error names the line."""

    flags: frozenset[str]
    lines: dict[str, int]

    def __new__(cls, path: str, flags: Iterable[str], lines: Mapping[str, int] | None = None) -> "_Origin":
        obj = super().__new__(cls, path)
        obj.flags = frozenset(flags)
        obj.lines = dict(lines or {})
        return obj


def _where(source: str | None, key: str) -> str:
    top = key.split(".")[0].split("[")[0]
    if isinstance(source, _Origin) and top in source.flags:
        flag = "--" + top.replace("_", "-")
        return f"{flag} (command line)" if key == top else f"{flag} (command line): key '{key}'"
    line = source.lines.get(key) if isinstance(source, _Origin) else None
    if line is not None:  # FILE:LINE, as compilers and the YAML syntax errors (read_yaml) write it
        return f"{source}:{line}: key '{key}'"
    return f"{source}: key '{key}'" if source else f"key '{key}'"


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every key of a YAML document, by dotted path as errors name them
    (``finetune.lr``, ``calibration[0].source``; a list item's own line under ``calibration[0]``).
    Composed only (no object is built, no tag runs); {} when the text does not compose."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}
    seen: set[int] = set()  # an alias repeats a node (and could point at itself)

    def walk(node: Any, prefix: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                out.setdefault(key, k.start_mark.line + 1)
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out.setdefault(f"{prefix}[{i}]", item.start_mark.line + 1)
                walk(item, f"{prefix}[{i}]")

    walk(root, "")
    return out


def _item_where(where: str, key: str, source: str | None, i: int) -> str:
    """Where item ``i`` of a list setting is: ``FILE: key 'calibration[0]'`` (nested keys then read
    ``calibration[0].source``)."""
    return _where(source, f"{key}[{i}]") if key else f"{where}[{i}]"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, key: str = "", source: str | None = None) -> Any:
    """Check ``value`` against type ``tp`` (converting int->float, list->tuple); raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: got {value!r}, allowed: {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item_tp = args[0]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: got {len(value)} items, expected {len(args)}")
            return tuple(_convert(v, a, _item_where(where, key, source, i), f"{key}[{i}]" if key else "", source)
                         for i, (v, a) in enumerate(zip(value, args)))
        else:
            item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, _item_where(where, key, source, i), f"{key}[{i}]" if key else "", source)
                 for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping of {tp.__name__} keys")
        return config_from_dict(tp, value, source=source, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected a string")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    return value


def _check_meta(value: Any, md: Mapping[str, Any], where: str) -> Any:
    """Check ``value`` against the field's range and choices; return it with every choice spelled as
    the field lists it (``Synthetic`` -> ``synthetic``: choices match case-insensitively, and code
    downstream compares exact strings)."""
    if value is None:
        return None
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    rng = md.get("range")
    for v in vals:
        if isinstance(v, float) and not math.isfinite(v):
            _check_finite(v, md, where)
    if rng is not None:
        lo, hi = rng
        for v in vals:
            if not isinstance(v, (int, float)):
                continue
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                lo_s = "-inf" if lo is None else lo
                hi_s = "inf" if hi is None else hi
                raise ConfigError(f"{where}: got {v!r}, allowed range is [{lo_s}, {hi_s}]")
    choices = md.get("choices")
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        canonical = [_canonical_choice(v, allowed) for v in vals]
        for v, c in zip(vals, canonical):
            if c is _MISSING:
                close = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: got {v!r}, allowed: {', '.join(map(str, allowed))}.{hint}")
        if isinstance(value, (list, tuple)):
            return type(value)(canonical)
        return canonical[0]
    return value


def _check_finite(v: float, md: Mapping[str, Any], where: str) -> None:
    """Refuse NaN (unless the field allows it) and, in a field with a range, +-inf (unless allowed):
    ``nan < lo`` is False, so NaN would pass every range check."""
    rng = md.get("range")
    if math.isnan(v):
        if md.get("allow_nan"):
            return
    elif rng is None or md.get("allow_inf"):
        return
    if rng is not None:
        lo, hi = rng
        want = ("a finite number" if lo is None and hi is None else f"a finite number >= {lo}" if hi is None
                else f"a finite number <= {hi}" if lo is None else f"a finite number in [{lo}, {hi}]")
    else:
        want = "a number (NaN is not allowed)"
    raise ConfigError(f"{where}: got {v!r}, expected {want}")


def _canonical_choice(v: Any, allowed: list[Any]) -> Any:
    """The entry of ``allowed`` that ``v`` names: ``v`` itself when listed as is, else the first entry
    equal ignoring case (as allowed spells it); ``_MISSING`` when none matches."""
    if any(v == a and type(v) is type(a) for a in allowed):
        return v
    low = str(v).lower()
    for a in allowed:
        if str(a).lower() == low:
            return a if isinstance(v, str) and isinstance(a, str) else v
    return _MISSING


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def validate_fields(cfg: Any) -> None:
    """Check every field of a config dataclass built in Python as a config file is checked (types,
    ranges, choices), converting as loading does (lists to tuples, ints to floats, paths to str).
    Call it first in ``__post_init__``: ``QuantConfig(recipe="nope")`` or ``QuantConfig(skip="fc")``
    then fails at once naming the field (``skip="fc"`` would otherwise be read as patterns 'f' and 'c')."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = _convert(getattr(cfg, f.name), hints[f.name], f.name, f.name)
        value = _check_meta(value, f.metadata, f.name)
        object.__setattr__(cfg, f.name, value)


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, source: str | None = None, prefix: str = "") -> C:
    """Build and validate ``cls`` from a mapping; errors name ``source`` (a file) and the key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source or 'config'}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            full = f"{prefix}.{key}" if prefix else str(key)
            article = "an" if cls.__name__[:1] in "AEIOU" else "a"
            raise ConfigError(
                f"{_where(source, full)} is not {article} {cls.__name__} setting.{hint} Known keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        where = _where(source, full)
        if name in data:
            value = _convert(data[name], hints[name], where, full, source)
            kwargs[name] = _check_meta(value, f.metadata, where)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"{where} is required ({f.metadata.get('help', '')})".rstrip(" ()"))
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        where = _check_where(source, str(exc), fields)
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_check_where(source, str(exc), fields) or cls.__name__}: {exc}") from None


def _check_where(source: str | None, message: str, fields: Iterable[str]) -> str:
    """Where a cross-field check (``__post_init__``) failed: the flags, when every setting the message
    names came from the command line, else the config file ("" when neither)."""
    named = [f for f in fields
             if re.search(rf"(?<![\w]){re.escape(f)}(?!\w)|--{re.escape(f.replace('_', '-'))}(?![\w-])", message)]
    if isinstance(source, _Origin) and named and all(f in source.flags for f in named):
        return ", ".join("--" + f.replace("_", "-") for f in named) + " (command line)"
    return str(source or "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples become lists) suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def _strict_loader() -> type:
    """``yaml.SafeLoader`` (no code runs) that refuses a key given twice in one mapping: plain YAML keeps
    the last silently, so ``bits: 6`` ... ``bits: 8`` (or ``{bits: 6, bits: 8}`` on one line) would
    quantize at 8 bits without a word. Keys brought in by a ``<<`` merge may be overridden, as in YAML."""
    import yaml
    from yaml.constructor import ConstructorError

    merge_tag = "tag:yaml.org,2002:merge"

    class StrictSafeLoader(yaml.SafeLoader):
        def flatten_mapping(self, node):  # type: ignore[override]
            # Checked here, before the first flattening: it prepends the entries of merged mappings to
            # node.value (the node of an anchor may be flattened through an alias before it is built).
            checked = self.__dict__.setdefault("_qfair_checked", set())
            own = None
            if id(node) not in checked:
                checked.add(id(node))
                own = [key_node for key_node, _ in node.value if key_node.tag != merge_tag]
            super().flatten_mapping(node)
            if own:
                self._refuse_repeats(own)

        def _refuse_repeats(self, key_nodes):
            seen: dict[Any, Any] = {}
            for key_node in key_nodes:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # unhashable key: SafeLoader reports it
                    continue
                if first is not key_node.start_mark:
                    at = f"line {first.line + 1}"
                    if first.line == key_node.start_mark.line:
                        at += f", column {first.column + 1}"
                    raise ConstructorError(None, None, f"key '{key}' given twice (first on {at}); keep one",
                                           key_node.start_mark)

    return StrictSafeLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` semantics (no code runs; a key given twice is an
    error); errors name file and line."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; pass a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"config {path} cannot be read ({exc.strerror}); pass a readable YAML file") from None
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        tags = " Only plain YAML is accepted (no python tags)." if "tag" in problem else ""
        raise ConfigError(f"{where}: invalid YAML ({problem}).{tags}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                base: Mapping[str, Any] | None = None, base_source: str | None = None) -> C:
    """Load ``cls`` from ``base`` (settings recorded earlier, e.g. a run's own config.yaml section; optional),
    then a YAML file (optional) on top, then ``overrides`` (flags win over both). An invalid value names the
    flag when it came from one, else the file (``path``, or ``base_source`` without one)."""
    data: dict[str, Any] = dict(base or {})
    source = base_source
    lines: dict[str, int] = {}
    if path is not None:
        file_data = read_yaml(path)
        data.update(file_data)
        source = str(path)
        lines = {k: n for k, n in key_lines(Path(path).read_text(encoding="utf-8")).items()
                 if k.split(".")[0].split("[")[0] in file_data}
    merged = dict(data)
    flags = [key for key, value in (overrides or {}).items() if value is not None]
    for key in flags:
        merged[key] = overrides[key]  # type: ignore[index]
    return config_from_dict(cls, merged, source=_Origin(source or "", flags, lines) if flags or lines else source)
