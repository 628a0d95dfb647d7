"""A tiny name -> object registry used for models, observers, recipes, losses and benchmarks.

Registries replace if/elif chains: ``MODELS.register("iresnet50")(fn)`` then ``MODELS.get(name)``.
Unknown names give an error that lists the names that exist and the closest match.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import QfairError

T = TypeVar("T")


class UnknownNameError(QfairError, KeyError):
    """Raised for a name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names (and aliases) to objects of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj`` under ``name`` and ``aliases`` (case-insensitive). ValueError, before anything
        changes, when one of them is already a name or an alias here, or is given twice."""
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        if key in self._aliases:
            raise ValueError(f"{self.kind} '{name}' is already an alias of {self.kind} '{self._aliases[key]}' "
                             "(pick another name)")
        new_aliases = [a.lower() for a in aliases]
        for alias in new_aliases:
            self._check_alias(name, alias, taken=[key, *new_aliases])
        self._items[key] = obj
        for alias in new_aliases:
            self._aliases[alias] = key

    def _check_alias(self, name: str, alias: str, taken: list[str]) -> None:
        """Refuse an alias of ``name`` that would shadow or repeat one: an existing name or alias, the
        name itself, or an alias listed twice (``taken``: the name and the aliases being added)."""
        if alias in self._items or alias in self._aliases:
            owner = alias if alias in self._items else self._aliases[alias]
            raise ValueError(f"{self.kind} '{name}': alias '{alias}' is already taken by {self.kind} '{owner}' "
                             "(pick another alias)")
        if taken.count(alias) > 1:
            raise ValueError(f"{self.kind} '{name}': alias '{alias}' is given twice, or equals the name")

    def canonical(self, name: str) -> str:
        key = str(name).lower()
        key = self._aliases.get(key, key)
        if key not in self._items:
            known = sorted(self._items) + sorted(self._aliases)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(sorted(self._items))}"
                + (f" (aliases: {', '.join(sorted(self._aliases))})" if self._aliases else "")
            )
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        key = str(name).lower()
        return self._aliases.get(key, key) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
