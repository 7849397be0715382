"""A tiny name -> factory registry (the TrojanZoo habit).

A new attack, defense, data set or model is one file plus one ``@REGISTRY.register``
line; the CLI and configs reach it by name without a dispatcher.

>>> reg = Registry("model")
>>> @reg.register("tiny")
... def make_tiny(): return 1
>>> reg.get("tiny")()
1
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import PoisonlabError, did_you_mean, one_line, shown

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise a one-line :class:`PoisonlabError`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; any other value (a config may hold anything) is a
        one-line error showing it briefly."""
        if not isinstance(name, str) or name not in self._items:
            known = sorted(self._items)
            hint = did_you_mean(name, known) if isinstance(name, str) and len(name) <= 100 else ""
            shown_name = f"'{one_line(name, 80)}'" if isinstance(name, str) else shown(name)
            raise PoisonlabError(f"unknown {self.kind} {shown_name}{hint}; known: {', '.join(known)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
