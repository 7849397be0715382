"""Base of the availability attacks: poisons that raise the test error for everyone (Biggio,
Nelson & Laskov 2012; Jagielski et al. 2018; Demontis et al. 2019), on the step pipeline's
``availability`` family (:mod:`poisonlab.measures.availability`).

An attack's budget is ``rate``: poisons as a share of the clean training rows (Demontis et al.
2019 report 5 / 10 / 20%). ``craft`` returns the poisoned set; the attack reads the clean
reference (its surrogate) and the attacker's validation rows carved from the training data,
never the test set."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attacks.base import PoisonResult
from ..attacks.configured import ConfiguredAttack
from ..data.base import Dataset
from ..errors import PoisonlabError
from ..targeted.targets import need_fraction


class AvailabilityAttack(ConfiguredAttack):
    """Config handling, the budget, the pipeline's calls. A subclass sets ``name`` and
    ``config_class`` (a dataclass with ``name`` and ``rate`` and its own keys) and implements
    ``craft``."""

    family = "availability"
    uses_reference = True
    filter_target: int | None = None
    """No class is the attack's target: filters report no per-target-class removal."""
    name = "availability"
    config_class: type = object

    def setup(self) -> None:
        need_fraction(self.cfg.rate, "attack.rate")
        self.report_: dict[str, Any] = {}

    def poison_count(self, train: Dataset) -> int:
        """``round(rate * N)`` poisons for ``N`` clean training rows."""
        return int(round(float(self.cfg.rate) * len(train)))

    regression = False
    """Whether the attack poisons regression data (``data.options.task: regression``)."""

    def check(self, train: Dataset) -> None:
        if not train.is_regression and train.num_classes < 2:
            raise PoisonlabError("an availability attack needs at least two classes")
        n = self.poison_count(train)
        if n < 1:
            raise PoisonlabError(f"attack.rate {self.cfg.rate} gives 0 poisons of {len(train)} training rows; raise it")

    # -- the pipeline's calls ----------------------------------------------------------
    def poison(self, train: Dataset, rng: np.random.Generator, reference: Any = None) -> PoisonResult:
        self.check(train)
        self.report_ = {}
        result, report = self.craft(train, self.poison_count(train), reference, rng)
        self.report_ = report
        return result

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        """The poisoned training set and what to report; the subclass's attack."""
        raise NotImplementedError

    def evaluation_set(self, test: Dataset) -> None:
        """Measured on the clean test set only: no attack inputs."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rate": float(self.cfg.rate), **self.report_}


def relabel_rows(train: Dataset, rows: torch.Tensor, labels: torch.Tensor) -> PoisonResult:
    """``train`` with the labels of ``rows`` replaced by ``labels`` (inputs unchanged)."""
    y = train.y.clone()
    y[rows] = labels.to(y.dtype)
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[rows] = True
    return PoisonResult(Dataset(train.x, y, list(train.classes), dict(train.meta)), mask, torch.arange(len(train)))


def add_rows(train: Dataset, source: torch.Tensor, x_new: torch.Tensor, y_new: torch.Tensor) -> PoisonResult:
    """``train`` with new rows ``x_new`` labelled ``y_new`` (made from the rows ``source``) added."""
    x = torch.cat([train.x, x_new.to(train.x.dtype)])
    y = torch.cat([train.y, y_new.to(train.y.dtype)])
    mask = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(len(x_new), dtype=torch.bool)])
    src = source.numpy()
    meta = {k: np.concatenate([v, v[src]]) for k, v in train.meta.items()}
    return PoisonResult(Dataset(x, y, list(train.classes), meta), mask, torch.cat([torch.arange(len(train)), source]))


def other_labels(y: torch.Tensor, num_classes: int, rng: np.random.Generator) -> torch.Tensor:
    """For each label, another class drawn uniformly (the other one for two classes)."""
    shift = torch.from_numpy(rng.integers(1, num_classes, size=len(y)).astype(np.int64))
    return (y.long() + shift) % num_classes
