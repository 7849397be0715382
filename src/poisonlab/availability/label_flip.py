"""Label flipping as an availability attack (Biggio, Nelson & Laskov 2011, "Support vector
machines under adversarial label noise"; Xiao, Xiao & Eckert 2012): ``rate`` x N training rows
get another label, their inputs unchanged.

``strategy: random`` flips rows drawn at random, each to another class drawn uniformly (the
other class for a binary task): the baseline every optimised attack must beat. ``greedy``
(any learner, through a scikit-learn surrogate) and ``alfa`` (binary SVMs, Xiao et al. 2012)
choose the flips adversarially: :mod:`poisonlab.availability.adversarial_flip`.

On regression data ``strategy: random`` is the random-flip baseline of Jagielski et al. (S&P
2018): the responses of random rows become ``low + high - y`` (``1 - y`` on the ``[0, 1]``
range of the paper's data, else the training responses' range)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..checks import is_whole
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from . import adversarial_flip
from .base import AvailabilityAttack, other_labels, relabel_rows

STRATEGIES = ("random", "greedy", "alfa")
MAX_CANDIDATES = 10_000
MAX_ITERATIONS = 1_000


@dataclass
class LabelFlipConfig:
    """``attack:`` keys of label flipping."""

    name: str = "label-flip"
    rate: float = 0.1
    """Rows flipped, as a share of the training set."""
    strategy: Literal["random", "greedy", "alfa"] = "random"
    candidates: int = 20
    """greedy: rows tried per round (each a surrogate refit)."""
    rounds_batch: int = 1
    """greedy: flips kept per round (the best ones of its candidates)."""
    objective: Literal["loss", "error"] = "loss"
    """greedy: maximise the surrogate's validation loss (log loss / hinge) or its error."""
    iterations: int = 20
    """alfa: most LP/SVM alternations (it stops earlier once the flip set repeats)."""
    surrogate: dict[str, Any] | None = None
    """greedy, alfa: {name, options} of a scikit-learn model; null: a copy of the reference's."""


@ATTACKS.register("label-flip")
class LabelFlip(AvailabilityAttack):
    """Flip the labels of ``rate`` x N training rows (see module docstring)."""

    name = "label-flip"
    config_class = LabelFlipConfig
    regression = True
    """``strategy: random`` only (see module docstring)."""

    def validate(self) -> None:
        c = self.cfg
        if c.strategy not in STRATEGIES:
            raise PoisonlabError(f"attack.strategy must be one of {', '.join(STRATEGIES)}, got {shown(c.strategy)}")
        for key, value, high in (("candidates", c.candidates, MAX_CANDIDATES),
                                 ("rounds_batch", c.rounds_batch, c.candidates),
                                 ("iterations", c.iterations, MAX_ITERATIONS)):
            if not is_whole(value) or not 1 <= value <= high:
                raise PoisonlabError(f"attack.{key} must be an integer in 1..{high}, got {shown(value)}")
        if c.objective not in ("loss", "error"):
            raise PoisonlabError(f"attack.objective must be loss or error, got {shown(c.objective)}")
        adversarial_flip.check_surrogate_spec(c.surrogate)

    def check(self, train: Dataset) -> None:
        if train.is_regression and self.cfg.strategy != "random":
            raise PoisonlabError(f"attack.strategy {self.cfg.strategy} is not supported for regression (data.options."
                                 "task: regression); use strategy random (y -> 1 - y), optp or statp")
        super().check(train)
        if self.poison_count(train) > len(train):
            raise PoisonlabError(f"attack.rate {self.cfg.rate} flips more rows than the {len(train)} there are")
        if self.cfg.strategy == "alfa" and train.num_classes != 2:
            raise PoisonlabError(f"attack.strategy alfa is for binary tasks; the data has {train.num_classes} classes "
                                 "(pick two with data.classes, or use strategy greedy)")

    def check_model(self, model: Any) -> None:
        """Before any training: the surrogate must be a scikit-learn estimator (an SVM for alfa)."""
        adversarial_flip.check_learner(self.cfg.strategy, self.cfg.surrogate, model)

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        pick = None
        if train.is_regression:
            return self._flip_responses(train, n_poison, rng)
        if self.cfg.strategy == "random":
            rows = torch.from_numpy(np.sort(rng.choice(len(train), size=n_poison, replace=False)).astype(np.int64))
            pick = rows.numpy(), other_labels(train.y[rows], train.num_classes, rng).numpy()
        rows, labels, report = adversarial_flip.choose_flips(self.cfg, train, n_poison, reference, rng, pick)
        result = relabel_rows(train, torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(labels))
        return result, {"n_flipped": len(rows), "strategy": self.cfg.strategy, **report}

    def _flip_responses(self, train: Dataset, n_poison: int,
                        rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        """Regression: random rows' responses ``y -> low + high - y`` (see module docstring)."""
        from .regression import unit_or_range

        y = train.y.double().numpy()
        low, high = (float(v[0]) for v in unit_or_range(y))
        rows = np.sort(rng.choice(len(train), size=n_poison, replace=False)).astype(np.int64)
        result = relabel_rows(train, torch.from_numpy(rows), torch.from_numpy(low + high - y[rows]))
        return result, {"n_flipped": len(rows), "strategy": "random", "response_low": low, "response_high": high}
