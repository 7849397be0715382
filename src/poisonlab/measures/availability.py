"""The measure of an availability attack: the test error of every model (and, in the run's
metrics, its increase over the clean reference: ``clean_error_increase``), per-class error and
the confusion matrix (Biggio et al. 2012; Demontis et al. 2019, Sec. 5)."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..data.base import Dataset
from ..train import predict
from . import MEASURES
from .backdoor import _rejects, clean_metrics


@MEASURES.register("availability")
class AvailabilityMeasure:
    """Clean test error, accuracy, per-class error (see module docstring)."""

    name = "availability"
    headline = {"clean_error": "test error %", "clean_accuracy": "clean acc. %"}

    def measure(self, model: nn.Module, test: Dataset, evaluation: Any, batch_size: int,
                device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        start = time.perf_counter()
        pred = predict(model, test.x, batch_size, device, desc=f"{name} clean test")
        out = clean_metrics(pred, test, _rejects(model))
        out["eval_seconds"] = time.perf_counter() - start
        return out, {"clean": pred}

    def describe(self, evaluation: Any) -> dict[str, Any]:
        return {}
