"""The subpopulation sweep as cells (Jagielski et al., CCS 2021, Sec. 4.2 and 5): one cell per
(subpopulation, alpha) of the steps every family shares (:mod:`poisonlab.pipeline.cells`):

* poison: round(alpha * n) label-flipped copies of the attacker's n rows of the subpopulation
  are added to the victim's clean training set D (:mod:`poisonlab.subpop.cell_plan`);
* fit the victim A(D ∪ D_p) with the sweep's learner;
* measure target damage on the subpopulation's test rows and collateral on the others against
  the clean model A(D) (:mod:`poisonlab.measures.subpopulation`);
* defend: every configured defense through :func:`poisonlab.defend.run_defenses`, as against
  BadNets, each defended model measured against the same A(D).

A cell's row (:func:`cell_row`): ``index``, ``alpha``, ``n_poison``, ``label``, ``target``,
``collateral``, ``subpop_accuracy_before`` / ``_after``, ``clean_accuracy_after``; per defense
``"{label}:target"``, ``":collateral"``, ``":clean_accuracy"``, ``":poisons_removed"`` and
``":clean_removed"`` (NaN for the defenses that drop no row), and what the defended model or
the defense declares: ``":certified_accuracy"`` (a model that certifies, at r = n_poison
flipped labels), ``":target_vs_smoothed_clean"`` (a defense with its own clean reference),
``":units_pruned"`` (pruning); ``seconds``.

The cells run serially or on forked workers (:func:`~poisonlab.pipeline.cell_pool.run_cells`);
each seeds its poison draw and training from (seed, subpopulation index, alpha index), so a
parallel sweep returns exactly the serial sweep's numbers, in the same order. The needs of
every defense are checked before the first cell (:func:`check_defense_needs`); thresholds are
fixed parameters (no test row is read to choose them; fine-pruning reads the clean validation
split ``val``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset
from ..defenses.registry import ConfiguredDefense, DefenseInputs, check_needs, offered_by
from ..errors import PoisonlabError
from ..measures import MEASURES
from ..measures.subpopulation import predicted_classes
from ..pipeline.cell_pool import default_workers, run_cells
from ..pipeline.cells import Cell, CellWork
from .cell_plan import SubpopulationFlips
from .learners import LearnerSpec, build, fit_victim

__all__ = ["SweepInputs", "cell_row", "check_defense_needs", "default_workers", "run_sweep", "sweep_work"]


@dataclass
class SweepInputs:
    """Everything a retraining needs, shared by all tasks."""

    spec: LearnerSpec
    victim: Dataset              # D, the victim's clean training rows (tensor features; without ``val``)
    attacker: Dataset            # the attacker's rows (tensor features)
    test: Dataset
    pretrained: nn.Module | None  # the clean model the transfer / fine-tune modes continue
    clean_pred: np.ndarray       # A(D) on the test set
    attacker_members: list[np.ndarray]  # per subpopulation: attacker rows (bool)
    test_members: list[np.ndarray]      # per subpopulation: test rows (bool)
    labels: list[int]            # per subpopulation: the poison label
    alphas: list[float]
    seed: int
    defenses: list[ConfiguredDefense] = field(default_factory=list)  # run in every task after the undefended fit
    val: Dataset | None = None   # the clean validation split carved from D (fine-pruning and the validation rules decide on it)


def sweep_work(s: SweepInputs) -> tuple[CellWork, SubpopulationFlips]:
    """The sweep as cells of the shared cell steps (:mod:`poisonlab.pipeline.cells`): the
    subpopulation attack's plan, the task's learner (same mode, same seed, also as every
    defense's ``retrain``), the subpopulation measure and every defense. Defenses that bring
    their own clean reference (``clean_reference``: the certified smoothed ridge) fit it on
    clean D here, once, before any cell."""
    references = {d.label: (d.cfg.clean_reference_metric, predicted_classes(d.cfg.clean_reference(s.victim), s.test.x))
                  for d in s.defenses if hasattr(d.cfg, "clean_reference")}
    plan = SubpopulationFlips(s.victim, s.attacker, s.attacker_members, s.test_members, s.labels, s.alphas,
                              s.clean_pred, s.test.num_classes, references)

    def fit(data: Dataset, name: str) -> nn.Module:
        return fit_victim(s.spec, s.pretrained, data, s.seed)

    work = CellWork(plan, fit, MEASURES.get("subpopulation")(), s.test, s.seed,
                    [(d.label, d.cfg) for d in s.defenses], s.val, "cpu", salt=0x5B)
    return work, plan


BASE = ("target", "collateral", "subpop_accuracy_before", "subpop_accuracy_after", "clean_accuracy")


def cell_row(plan: SubpopulationFlips, cell: Cell) -> dict[str, Any]:
    """One cell as a row of the sweep's table (see the module docstring for its keys)."""
    i, j = cell.key
    m = cell.metrics
    n_poison = cell.poison.n_poison
    out: dict[str, Any] = {"index": i, "alpha": plan.alphas[j], "n_poison": n_poison, "label": plan.labels[i],
                           **{k: m[k] for k in BASE[:4]}, "clean_accuracy_after": m["clean_accuracy"]}
    nan = float("nan")
    for label, entry in cell.defended.metrics.items():
        measured, found = cell.measured[label], entry.get("detection")
        extra = {k: v for k, v in measured.items() if k not in BASE}
        if "n_pruned" in entry:  # pruning: the hidden units pruned
            extra["units_pruned"] = entry["n_pruned"]
        out.update({f"{label}:target": measured["target"], f"{label}:collateral": measured["collateral"],
                    f"{label}:clean_accuracy": measured["clean_accuracy"],
                    f"{label}:poisons_removed": float(found["recall"]) if found is not None and n_poison else nan,
                    f"{label}:clean_removed": float(found["fpr"]) if found is not None else nan,
                    **{f"{label}:{k}": v for k, v in extra.items()}})
    out["seconds"] = cell.seconds
    return out


def check_defense_needs(inputs: SweepInputs) -> None:
    """One-line error naming the first defense whose needs the sweep does not offer (before any task)."""
    if not inputs.defenses:
        return
    state = torch.get_rng_state(), np.random.get_state()
    try:  # an untrained learner of the task's kind (its seeding must not move the tasks' draws)
        model = build(inputs.spec, inputs.victim, inputs.seed)
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
    ctx = DefenseInputs(inputs.victim, None, lambda data, name: model, None, inputs.val, model=model)
    offered = offered_by(ctx)
    for d in inputs.defenses:
        check_needs(d.spec, offered, d.cfg, d.label)


def run_sweep(inputs: SweepInputs, workers: int = 1) -> list[dict[str, Any]]:
    """Every (subpopulation, alpha) cell as a row; ``workers > 1`` forks that many processes.

    Rows come back ordered by (subpopulation, alpha) whatever the completion order.
    """
    if workers < 1:
        raise PoisonlabError(f"workers must be >= 1, got {workers}")
    if not inputs.labels or not inputs.alphas:
        raise PoisonlabError("no subpopulation to attack: widen the size bounds or lower min_test")
    check_defense_needs(inputs)
    work, plan = sweep_work(inputs)
    return run_cells(work, plan.keys(), lambda cell: cell_row(plan, cell), workers, "subpopulation retrainings")
