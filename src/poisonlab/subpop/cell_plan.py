"""The attack of a subpopulation sweep as a cell plan (Jagielski et al., CCS 2021, Sec. 4.2):
cell ``(i, alpha index j)`` adds ``poison_count(alpha_j, n_i)`` label-flipped copies of the
attacker's ``n_i`` rows of subpopulation ``i`` to the victim's clean training set D, and is
measured on subpopulation ``i``'s test rows against the clean model A(D)
(:class:`~poisonlab.measures.subpopulation.SubpopulationTarget`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..attacks.base import PoisonResult
from ..data.base import Dataset
from ..measures.subpopulation import SubpopulationTarget
from .poisons import label_flip_poisons


@dataclass
class SubpopulationFlips:
    """Plans the cells of one sweep from the victim's D, the attacker's rows and the memberships."""

    victim: Dataset
    attacker: Dataset
    attacker_members: list[np.ndarray]
    test_members: list[np.ndarray]
    labels: list[int]
    alphas: list[float]
    clean_pred: np.ndarray
    num_classes: int
    references: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    def keys(self) -> list[tuple[int, int]]:
        """Every cell, ordered by (subpopulation, alpha)."""
        return [(i, j) for i in range(len(self.labels)) for j in range(len(self.alphas))]

    def __call__(self, key: tuple, rng: np.random.Generator) -> tuple[PoisonResult, SubpopulationTarget]:
        i, j = key
        rows = np.flatnonzero(self.attacker_members[i])
        x_p, y_p, picked = label_flip_poisons(self.attacker.x[rows], self.alphas[j], self.labels[i], rng,
                                              self.num_classes)
        data = Dataset(torch.cat([self.victim.x, x_p]), torch.cat([self.victim.y, y_p]), list(self.victim.classes))
        mask = torch.zeros(len(data), dtype=torch.bool)
        mask[len(self.victim):] = True
        source = torch.from_numpy(rows[picked])  # the attacker rows each poison copies
        return (PoisonResult(data, mask, source),
                SubpopulationTarget(self.clean_pred, self.test_members[i], len(y_p), self.references))
