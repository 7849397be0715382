"""Label flipping as an availability attack (Biggio, Nelson & Laskov 2011, "Support vector
machines under adversarial label noise"; Xiao et al. 2012): ``rate`` x N training rows get
another label, their inputs unchanged.

``strategy: random`` flips rows drawn at random, each to another class drawn uniformly (the
other class for a binary task): the baseline every optimised attack must beat."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .base import AvailabilityAttack, other_labels, relabel_rows


@dataclass
class LabelFlipConfig:
    """``attack:`` keys of label flipping."""

    name: str = "label-flip"
    rate: float = 0.1
    """Rows flipped, as a share of the training set."""
    strategy: Literal["random"] = "random"


@ATTACKS.register("label-flip")
class LabelFlip(AvailabilityAttack):
    """Flip the labels of ``rate`` x N training rows (see module docstring)."""

    name = "label-flip"
    config_class = LabelFlipConfig

    def validate(self) -> None:
        if self.cfg.strategy not in ("random",):
            raise PoisonlabError(f"attack.strategy must be random, got {shown(self.cfg.strategy)}")

    def check(self, train: Dataset) -> None:
        super().check(train)
        if self.poison_count(train) > len(train):
            raise PoisonlabError(f"attack.rate {self.cfg.rate} flips more rows than the {len(train)} there are")

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        rows = torch.from_numpy(np.sort(rng.choice(len(train), size=n_poison, replace=False)).astype(np.int64))
        labels = other_labels(train.y[rows], train.num_classes, rng)
        return relabel_rows(train, rows, labels), {"n_flipped": n_poison, "strategy": self.cfg.strategy}
