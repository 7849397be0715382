"""Attack families, registered by name in :data:`FAMILIES`.

A family is what a config or grid cell runs: how its config is read, how one experiment runs,
the hash that keys its results, and what a grid keeps and averages of a finished cell. Most
families are the step pipeline (:mod:`poisonlab.pipeline`) with their own measure
(:class:`~poisonlab.families.step_family.StepFamily`: ``backdoor``); the subpopulation sweep is
``subpopulation``. Nothing outside this registry dispatches on a family's name: a new family
is one file plus one ``FAMILIES.register`` line.

A config names its family with a top-level ``family:`` key; without one it is the family its
attack declares (``attack.name`` looked up in :data:`~poisonlab.attacks.ATTACKS`), else
``backdoor``. Grids name it with ``kind:`` (``badnets`` and ``subpop`` are accepted aliases).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

from ..errors import PoisonlabError
from ..registry import Registry


class Family(Protocol):
    """What the CLI, the API and the grid need of an attack family (see module docstring)."""

    name: str
    config_class: type

    def config_from(self, raw: dict[str, Any]) -> Any: ...

    def run(self, cfg: Any, data: Any = None) -> Any: ...

    def cell_hash(self, cfg: Any) -> str: ...


FAMILIES: Registry[Any] = Registry("attack family")
ALIASES = {"badnets": "backdoor", "subpop": "subpopulation"}
"""Older names of families (grid ``kind:`` values before the registry)."""
DEFAULT = "backdoor"


def get_family(name: Any) -> Any:
    """The family registered as ``name`` (or an alias of it); one-line error otherwise."""
    return FAMILIES.get(ALIASES.get(name, name) if isinstance(name, str) else name)


def family_of(raw: dict[str, Any]) -> Any:
    """The family a raw config mapping belongs to: its ``family:`` key, else its attack's
    declared family, else :data:`DEFAULT`."""
    if "family" in raw:
        return get_family(raw["family"])
    attack = raw.get("attack")
    if isinstance(attack, dict) and "name" in attack:
        from ..attacks import ATTACKS

        if isinstance(attack["name"], str) and attack["name"] in ATTACKS:
            return get_family(getattr(ATTACKS.get(attack["name"]), "family", DEFAULT))
    return get_family(DEFAULT)


def load_any_config(path: str | Path | None, overrides: list[str] | None = None, family: str | None = None,
                    **top: Any) -> tuple[Any, Any]:
    """``(family, config)`` of a YAML file (or nothing) with ``--set`` overrides and top-level keys
    (``None`` values skipped); ``family`` forces one (``poisonlab subpop``)."""
    from ..checks import check_values
    from ..config import apply_overrides, read_yaml

    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    for key, value in top.items():
        if value is not None:
            raw[key] = value
    fam = get_family(family) if family is not None else family_of(raw)
    if family is not None and "family" in raw and get_family(raw["family"]) is not fam:
        raise PoisonlabError(f"the config is of family '{raw['family']}', not '{family}'; run it with poisonlab run")
    raw = {k: v for k, v in raw.items() if k != "family"}
    check_values(raw)
    return fam, fam.config_from(copy.deepcopy(raw))


def run_config(cfg: Any, data: Any = None) -> Any:
    """Run a validated config of any family (the family of its config class)."""
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        if type(cfg) is fam.config_class and getattr(fam, "accepts", lambda c: True)(cfg):
            return fam.run(cfg, data)
    raise PoisonlabError(f"no attack family runs a {type(cfg).__name__}")


from . import availability, step_family, subpopulation  # noqa: E402,F401,I001  (register the families)

__all__ = ["FAMILIES", "Family", "family_of", "get_family", "load_any_config", "run_config"]
