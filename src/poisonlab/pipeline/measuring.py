"""Measuring a model with the family's measure, and what a run records of its training."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .context import Context, TrainedModel, Victim


def measure_model(ctx: Context, model: nn.Module, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The family's metrics of ``model`` on the test set and the attack's evaluation data, and its predictions."""
    return ctx.family.measure.measure(model, ctx.test, ctx.evaluation, ctx.cfg.train.eval_batch_size, ctx.device,
                                      name)


def model_metrics(trained: TrainedModel, evaluation: dict[str, Any]) -> dict[str, Any]:
    """A model's metrics plus how it was trained (time, speed, chosen epoch, history, cache)."""
    r = trained.result
    hist = r.history
    return {**evaluation, "train_seconds": r.seconds, "train_images_per_second": r.images_per_second,
            "chosen_epoch": r.chosen_epoch, "from_cache": trained.cached,
            "val_accuracy": hist[r.chosen_epoch - 1].get("val_acc") if hist and r.chosen_epoch else None,
            "history": hist}


def measure_victim(ctx: Context, victim: Victim, name: str) -> None:
    """Measure ``victim`` and fill its metrics and predictions."""
    evaluation, victim.preds = measure_model(ctx, victim.trained.model, name)
    victim.metrics = model_metrics(victim.trained, evaluation)
