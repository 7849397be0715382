"""How a family's attack is measured, registered by name in :data:`MEASURES`.

A measure turns a trained model and the test data into metrics: for backdoors clean accuracy,
attack success and per-class errors (:mod:`poisonlab.measures.backdoor`). It also names its
*headline* metrics: the numbers a grid averages over seeds and ``poisonlab runs`` lists.
A new family's measure is one file plus one ``@MEASURES.register`` line.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ..data.base import Dataset
from ..registry import Registry


class Measure(Protocol):
    """What a family measures (see module docstring)."""

    name: str
    headline: dict[str, str]
    """Metric key -> column title of the grid table, in order (rates, shown in percent)."""

    def measure(self, model: nn.Module, test: Dataset, evaluation: Any, batch_size: int,
                device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Metrics of ``model`` on ``test`` and the attack's ``evaluation`` data, and its predictions."""
        ...

    def describe(self, evaluation: Any) -> dict[str, Any]:
        """What the run records of the attack's evaluation data (e.g. how many triggered inputs)."""
        ...


MEASURES: Registry[Any] = Registry("measure")

from . import availability, backdoor, subpopulation, targeted  # noqa: E402,F401  (register the measures)

__all__ = ["MEASURES", "Measure"]
