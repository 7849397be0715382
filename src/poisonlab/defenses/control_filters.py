"""The two controls a filtering defense is read against (Geiping et al. 2021 and Schwarzschild et
al. 2021 ask for them): ``oracle-filter`` removes exactly the poison rows (what a perfect filter
could save at most) and ``random-filter`` removes as many rows as there are poisons, drawn at
random from the defense seed (what removing that many rows costs without any detection). Both
retrain the victim on the kept rows like any filter. They read the attack's poison mask: they
are measurements, not defenses a defender could run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PoisonlabError
from .filter_defenses import removal_report
from .pruning_config import DefenseOutcome
from .registry import DefenseInputs


@dataclass
class OracleFilterConfig:
    """``defenses:`` keys of the oracle filter (none but ``name`` and ``label``)."""

    name: str = "oracle-filter"
    label: str | None = None

    def validate(self, where: str = "defense") -> None:
        """Nothing to check."""


@dataclass
class RandomFilterConfig:
    """``defenses:`` keys of the random filter (none but ``name`` and ``label``)."""

    name: str = "random-filter"
    label: str | None = None

    def validate(self, where: str = "defense") -> None:
        """Nothing to check."""


def _mask(ctx: DefenseInputs, name: str) -> np.ndarray:
    if ctx.train is None or ctx.retrain is None:
        raise PoisonlabError(f"defense '{name}' retrains the victim on kept rows; it needs the training set and a way "
                             f"to retrain")
    if ctx.poison_mask is None:
        raise PoisonlabError(f"defense '{name}' is a control that reads the attack's poison mask; run it after an "
                             f"attack")
    mask = ctx.poison_mask
    return (mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)).astype(bool)


def _retrain_without(ctx: DefenseInputs, remove: np.ndarray, name: str) -> DefenseOutcome:
    keep = torch.from_numpy(np.flatnonzero(~remove))
    retrained = ctx.retrain(ctx.train.subset(keep), name) if remove.any() else ctx.model
    return DefenseOutcome(retrained, extra={**removal_report(remove, ctx), "retrained": bool(remove.any())},
                          removed=remove.copy())


def oracle_filter_defense(cfg: OracleFilterConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """Remove exactly the poison rows, retrain."""
    name = cfg.label or cfg.name
    return _retrain_without(ctx, _mask(ctx, name), name)


def random_filter_defense(cfg: RandomFilterConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """Remove as many random rows as there are poisons (seeded by the defense seed), retrain."""
    name = cfg.label or cfg.name
    poison = _mask(ctx, name)
    rng = np.random.default_rng([int(ctx.seed), 0xF11])
    remove = np.zeros(len(poison), bool)
    remove[rng.choice(len(poison), size=int(poison.sum()), replace=False)] = True
    return _retrain_without(ctx, remove, name)
