"""The subpopulation measure (Jagielski et al., CCS 2021, Sec. 3): target damage and collateral
of a model against the clean model A(D), on one subpopulation's test rows and the rest.

A cell's evaluation data (:class:`SubpopulationTarget`) hold A(D)'s test predictions, which test
rows belong to the subpopulation and how many poisons the cell added. Two reports follow from
what the measured model declares, not from a defense's name: a model that certifies its
predictions (``certified_correct(x, y, r)``, the certified defense of Rosenfeld et al. 2020)
adds ``certified_accuracy`` on the subpopulation at ``r = n_poison``; a defense that brings its
own clean reference (its procedure fitted on clean D, in ``references``) adds target damage
against that reference under the reference's own metric name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset
from ..subpop.metrics import accuracy_on, collateral, target_damage
from . import MEASURES


@dataclass
class SubpopulationTarget:
    """How one cell is measured: A(D) on the test set, the subpopulation's test rows, the poisons."""

    clean_pred: np.ndarray
    member: np.ndarray
    n_poison: int
    references: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    """Per defense label: (metric name, test predictions of that defense's procedure on clean D)."""


def predicted_classes(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Predicted classes; a model with its own ``predict_rows`` (the smoothed ridge, float64) uses it."""
    if hasattr(model, "predict_rows"):
        return model.predict_rows(x)
    from ..subpop.learners import predictions

    return predictions(model, x, batch_size)


@MEASURES.register("subpopulation")
class SubpopulationMeasure:
    """Target damage, collateral, subpopulation and overall accuracy against A(D)."""

    name = "subpopulation"
    headline = {"target": "target damage", "collateral": "collateral"}

    def measure(self, model: nn.Module, test: Dataset, evaluation: SubpopulationTarget, batch_size: int,
                device: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        pred = predicted_classes(model, test.x, batch_size)
        y, member, clean = test.y.numpy(), evaluation.member, evaluation.clean_pred
        out: dict[str, Any] = {"target": target_damage(clean, pred, y, member),
                               "collateral": collateral(clean, pred, y, member),
                               "subpop_accuracy_before": accuracy_on(clean, y, member),
                               "subpop_accuracy_after": accuracy_on(pred, y, member),
                               "clean_accuracy": float((pred == y).mean())}
        if hasattr(model, "certified_correct"):
            right = model.certified_correct(test.x[torch.from_numpy(member)], y[member], evaluation.n_poison)
            out["certified_accuracy"] = float(np.mean(right)) if member.any() else float("nan")
        if name in evaluation.references:
            metric, reference = evaluation.references[name]
            out[metric] = target_damage(reference, pred, y, member)
        return out, {"pred": pred}

    def describe(self, evaluation: SubpopulationTarget) -> dict[str, Any]:
        return {"subpopulation_test_rows": int(evaluation.member.sum()), "n_poison": evaluation.n_poison}
