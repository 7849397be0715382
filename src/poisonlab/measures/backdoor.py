"""The backdoor measure (BadNets, Gu et al. 2017, Tables 1-3): clean accuracy and error, attack
success on triggered test inputs, per-class clean and backdoor errors, confusion matrices.

A :class:`~poisonlab.defenses.RejectingClassifier` (a detector defense such as STRIP) answers
class ``num_classes`` for an input it refuses: a refused clean input counts as an error, a
refused triggered input as a failed attack; the confusion matrices count answered inputs
only, and ``clean_rejected_rate`` / ``triggered_rejected_rate`` give the shares refused.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..attacks import AttackTestSet
from ..data.base import Dataset
from ..metrics import accuracy, confusion_matrix, mean_class_error, per_class_error
from ..train import predict
from . import MEASURES


def _rejects(model: nn.Module) -> bool:
    from ..defenses import RejectingClassifier

    return isinstance(model, RejectingClassifier)


def clean_metrics(pred: torch.Tensor, test: Dataset, rejects: bool) -> dict[str, Any]:
    """Accuracy, error, per-class error and confusion of predictions ``pred`` on clean ``test``."""
    c = test.num_classes
    answered = pred < c
    out: dict[str, Any] = {
        "clean_accuracy": accuracy(pred, test.y),
        "clean_error": 1 - accuracy(pred, test.y),
        "per_class_clean_error": per_class_error(pred, test.y, test.y, c).tolist(),
        "confusion_clean": confusion_matrix(pred[answered], test.y[answered], c).tolist(),
    }
    if rejects:
        out["clean_rejected_rate"] = float((~answered).float().mean()) if len(answered) else float("nan")
    return out


def triggered_metrics(pred: torch.Tensor, attack_set: AttackTestSet, c: int, rejects: bool) -> dict[str, Any]:
    """Attack success and per-class backdoor error of predictions ``pred`` on the triggered inputs."""
    answered = pred < c
    success = attack_set.success(pred) & answered  # a refused input defeats the attack
    out: dict[str, Any] = {}
    if rejects:
        out["triggered_rejected_rate"] = float((~answered).float().mean())
    # backdoor error per true class = share of that class's triggered images where the attack failed
    per_class = per_class_error(success.long(), attack_set.true, torch.ones_like(attack_set.true), c)
    asr = float(success.float().mean())
    out.update({
        "attack_success_rate": asr,
        "backdoor_error": 1 - asr,
        "mean_class_backdoor_error": mean_class_error(per_class),
        "per_class_backdoor_error": per_class.tolist(),
        "confusion_triggered": confusion_matrix(pred[answered], attack_set.true[answered], c).tolist(),
    })
    return out


@MEASURES.register("backdoor")
class BackdoorMeasure:
    """Clean accuracy and attack success of a model (see module docstring)."""

    name = "backdoor"
    headline = {"clean_accuracy": "clean acc. %", "attack_success_rate": "attack success %"}

    def measure(self, model: nn.Module, test: Dataset, evaluation: AttackTestSet | None, batch_size: int,
                device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        start = time.perf_counter()
        rejects = _rejects(model)
        pred_clean = predict(model, test.x, batch_size, device, desc=f"{name} clean test")
        out = clean_metrics(pred_clean, test, rejects)
        preds = {"clean": pred_clean}
        if evaluation is not None and len(evaluation.x):
            pred_bd = predict(model, evaluation.x, batch_size, device, desc=f"{name} triggered test")
            out.update(triggered_metrics(pred_bd, evaluation, test.num_classes, rejects))
            preds["triggered"] = pred_bd
        out["eval_seconds"] = time.perf_counter() - start
        return out, preds

    def describe(self, evaluation: AttackTestSet | None) -> dict[str, Any]:
        return {"test_triggered": len(evaluation.x)} if evaluation is not None else {}
