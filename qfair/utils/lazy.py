"""Lazy package exports: a name is imported from its module the first time it is used.

Keeps ``import qfair`` and ``import qfair.<stage>`` cheap (no torch, onnx, ... until a feature needs
them). Usage in a package ``__init__``::

    _LAZY = {"quantize": "qfair.quant.ptq:quantize"}
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
"""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable, Iterable, Mapping


def lazy_exports(package: str, table: Mapping[str, str], submodules: Iterable[str] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` resolving ``table``
    (public name -> ``"module:attribute"``) and the listed ``submodules`` on first access."""
    namespace = sys.modules[package].__dict__
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            if name in subs:
                return import_module(f"{package}.{name}")
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        mod, _, attr = target.partition(":")
        value = getattr(import_module(mod), attr or name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table) | subs)

    return __getattr__, __dir__
