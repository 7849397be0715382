"""Poisoning attacks, registered by name in :data:`ATTACKS`."""
from __future__ import annotations

from typing import Any

from ..errors import PoisonlabError
from .badnets import BadNets, BadNetsConfig
from .base import ATTACKS, Attack, AttackTestSet, PoisonResult, arrays_or_dataset


def build_attack(raw: dict[str, Any]) -> Attack:
    """Build an attack from its ``attack:`` config section (``name`` picks the attack)."""
    if not isinstance(raw, dict) or "name" not in raw:
        raise PoisonlabError(f"attack section needs a 'name' (one of {', '.join(ATTACKS.names())})")
    return ATTACKS.get(raw["name"]).from_config(raw)


from .. import availability as _availability  # noqa: E402,F401  (register the availability attacks)
from .. import targeted as _targeted  # noqa: E402,F401  (register the targeted attacks)

__all__ = ["ATTACKS", "Attack", "AttackTestSet", "PoisonResult", "BadNets", "BadNetsConfig", "arrays_or_dataset",
           "build_attack"]
