"""What every attack provides, and the attack registry.

An attack is a value object built from config. ``poison(train, rng)`` returns the new
training set and a boolean mask of the poison rows (defenses are scored against it);
``evaluation_set(test)`` says how the attack is measured on test data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..data.base import Dataset
from ..registry import Registry


@dataclass
class PoisonResult:
    """The poisoned training set, which rows are poison, and which clean rows they copy."""

    dataset: Dataset
    poison_mask: torch.Tensor
    source_index: torch.Tensor

    @property
    def n_poison(self) -> int:
        return int(self.poison_mask.sum())


@dataclass
class AttackTestSet:
    """Test inputs carrying the attack, the labels the attacker wants, the true labels,
    and the test-set row each one was made from."""

    x: torch.Tensor
    target: torch.Tensor
    true: torch.Tensor
    rows: torch.Tensor
    untargeted: bool = False
    """True when any wrong label counts as success (``target`` is then not used)."""

    def success(self, pred: torch.Tensor) -> torch.Tensor:
        """Per-row attack success of predictions ``pred`` on ``x``."""
        return pred != self.true if self.untargeted else pred == self.target


class Attack(Protocol):
    """A poisoning attack (see module docstring)."""

    name: str

    def check(self, train: Dataset) -> None: ...

    def poison(self, train: Dataset, rng: np.random.Generator) -> PoisonResult: ...

    def evaluation_set(self, test: Dataset) -> AttackTestSet: ...

    def describe(self) -> dict[str, Any]: ...


ATTACKS: Registry[Any] = Registry("attack")
