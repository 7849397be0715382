"""Attacks built from a config dataclass, in scikit-learn's manner: the constructor stores and
checks parameters (a mapping, keyword parameters or the dataclass itself), ``get_params``
returns them. The targeted and availability families' attacks derive from :class:`ConfiguredAttack`."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..config import from_dict
from ..errors import PoisonlabError, shown


class ConfiguredAttack:
    """A subclass sets ``name`` and ``config_class`` (a dataclass with a ``name`` key); ``setup``
    is its base class's checks and state, ``validate`` its own parameter checks."""

    name = "attack"
    config_class: type = object

    def __init__(self, cfg: Any = None, **params: Any) -> None:
        if cfg is not None and params:
            raise PoisonlabError(f"{type(self).__name__} takes a config or keyword parameters, not both")
        if cfg is None or isinstance(cfg, dict):
            cfg = from_dict(self.config_class, {"name": self.name, **(params if cfg is None else cfg)}, "attack")
        elif not isinstance(cfg, self.config_class):
            raise PoisonlabError(f"{type(self).__name__} takes a {self.config_class.__name__}, a mapping or keywords, "
                                 f"got {shown(cfg)}")
        self.cfg = cfg
        self.setup()
        self.validate()

    def setup(self) -> None:
        """The family base's checks and state (before :meth:`validate`)."""

    def validate(self) -> None:
        """The attack's own parameter checks (one-line errors)."""

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> "ConfiguredAttack":
        return cls(from_dict(cls.config_class, dict(raw), "attack"))

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "name"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"
