"""One cell of an experiment: one poisoned training set and what came of it, as the same four
steps for every family (:data:`CELL_STEPS`): poison -> fit the victim -> measure -> defend.

A backdoor experiment is one cell (key ``()``) inside its experiment-level steps
(:mod:`poisonlab.pipeline.steps`); a subpopulation sweep (Jagielski et al., CCS 2021) is a set
of cells, one per (subpopulation, alpha), run by :func:`poisonlab.pipeline.cell_pool.run_cells`.
What differs between families is only in the :class:`CellWork` they hand over: the attack's
``plan`` (a cell's key -> its poisoned training set and how it is measured), the victim's
``fit`` and the family's registered measure (:data:`~poisonlab.measures.MEASURES`). Defenses
are run by :func:`poisonlab.defend.run_defenses`, the one defense dispatch of the project.

Each cell draws its poisons from ``default_rng([seed, *key, salt])``: a cell's numbers depend
on its key and the seed only, never on which worker ran it or in which order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from torch import nn

from ..data.base import Dataset
from ..defend import DefenseReport, run_defenses
from ..defenses.registry import DefenseInputs

Plan = Callable[[tuple, np.random.Generator], tuple[Any, Any]]
"""The attack's part: a cell's key and its generator -> (a PoisonResult, the evaluation data)."""


@dataclass
class CellWork:
    """What every cell of one experiment shares (forked to workers, never pickled per cell)."""

    plan: Plan
    fit: Callable[[Dataset, str], Any]
    """Train the victim's learner on a data set (``name``: what is trained, for progress): an
    ``nn.Module``, or a :class:`~poisonlab.pipeline.context.TrainedModel` (with how it trained)."""
    measure: Any
    """The family's measure (:class:`~poisonlab.measures.Measure`)."""
    test: Dataset
    seed: int
    defenses: list[tuple[str, Any]] = field(default_factory=list)
    """``(label, config)`` of every defense, run in order after the undefended victim."""
    val: Dataset | None = None
    device: Any = "cpu"
    batch_size: int = 4096
    salt: int = 0
    """Mixed into every cell's generator (the attack family's own constant)."""


@dataclass
class Cell:
    """One cell's state, filled by :data:`CELL_STEPS` in order."""

    key: tuple
    poison: Any = None
    evaluation: Any = None
    trained: Any = None
    """What ``fit`` returned for the victim."""
    model: nn.Module | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    preds: dict[str, Any] = field(default_factory=dict)
    defended: DefenseReport = field(default_factory=DefenseReport)
    """What :func:`~poisonlab.defend.run_defenses` reported per defense (its measure, time, removals)."""
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per defense label: the measure of the defended model alone."""
    seconds: float = 0.0


def module_of(trained: Any) -> nn.Module:
    """The model itself, from an ``nn.Module`` or a ``TrainedModel``."""
    return trained.model if hasattr(trained, "result") and hasattr(trained, "model") else trained


def poison(work: CellWork, cell: Cell) -> None:
    """The attack poisons the training set of this cell."""
    rng = np.random.default_rng([work.seed, *cell.key, work.salt])
    cell.poison, cell.evaluation = work.plan(cell.key, rng)


def fit_victim(work: CellWork, cell: Cell) -> None:
    """Fit the victim on the poisoned training set."""
    cell.trained = work.fit(cell.poison.dataset, "victim")
    cell.model = module_of(cell.trained)


def measure(work: CellWork, cell: Cell) -> None:
    """The family's measure of the victim."""
    cell.metrics, cell.preds = work.measure.measure(cell.model, work.test, cell.evaluation, work.batch_size, work.device,
                                           "victim")


def defend(work: CellWork, cell: Cell) -> None:
    """Every defense against the victim, each defended model measured like the victim. Filters
    and robust training may drop training rows and retrain with the cell's own ``fit``; no
    test row is given to a defense."""
    if not work.defenses:
        return
    context = DefenseInputs(cell.poison.dataset, cell.poison.poison_mask,
                            lambda data, name: module_of(work.fit(data, name)), None, work.val)

    def evaluate(model: nn.Module, name: str) -> dict[str, Any]:
        cell.measured[name] = work.measure.measure(model, work.test, cell.evaluation, work.batch_size,
                                                   work.device, name)[0]
        return cell.measured[name]

    cell.defended = run_defenses(work.defenses, cell.model, work.val, None, None, evaluate, work.seed, work.device,
                                 cell.metrics, None, "victim", context)


CELL_STEPS: tuple[Callable[[CellWork, Cell], None], ...] = (poison, fit_victim, measure, defend)
"""The steps of one cell, in run order."""


def run_cell(work: CellWork, key: tuple) -> Cell:
    """Run :data:`CELL_STEPS` for the cell ``key``; its wall time in ``seconds``."""
    start = time.perf_counter()
    cell = Cell(tuple(key))
    for step in CELL_STEPS:
        step(work, cell)
    cell.seconds = time.perf_counter() - start
    return cell
