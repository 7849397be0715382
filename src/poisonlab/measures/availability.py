"""The measure of an availability attack: the test error of every model (and, in the run's
metrics, its increase over the clean reference: ``clean_error_increase``), per-class error and
the confusion matrix (Biggio et al. 2012; Demontis et al. 2019, Sec. 5).

On regression data (:attr:`~poisonlab.data.base.Dataset.is_regression`) the same measure gives
the test mean squared error instead (Jagielski et al., "Manipulating Machine Learning", S&P
2018, arXiv 1804.00308, Figs. 3-4), with RMSE, MAE and R^2; the run's metrics add its increase
over the clean reference (``test_mse_increase``) and their ratio (``test_mse_ratio``). The
family picks :attr:`AvailabilityMeasure.regression_headline` for such runs."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..data.base import Dataset
from ..train import predict, predict_logits
from . import MEASURES
from .backdoor import _rejects, clean_metrics


def regression_metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Test MSE, RMSE, MAE and R^2 of predictions ``pred`` (N,) for responses ``y`` (float64 sums)."""
    p, t = pred.double().reshape(-1), y.double().reshape(-1)
    err = p - t
    mse = float((err ** 2).mean()) if len(t) else float("nan")
    var = float(((t - t.mean()) ** 2).mean()) if len(t) else float("nan")
    return {"test_mse": mse, "test_rmse": mse ** 0.5, "test_mae": float(err.abs().mean()) if len(t) else float("nan"),
            "test_r2": 1.0 - mse / var if var > 0 else float("nan")}


@MEASURES.register("availability")
class AvailabilityMeasure:
    """Clean test error, accuracy, per-class error; test MSE on regression data (see module docstring)."""

    name = "availability"
    headline = {"clean_error": "test error %", "clean_accuracy": "clean acc. %"}
    regression_headline = {"test_mse": "test MSE", "test_mse_ratio": "MSE / clean MSE"}
    """The headline of a regression run: ``test_mse_ratio`` is the model's MSE over the clean reference's."""
    display = {"test_mse": (1.0, 5), "test_mse_ratio": (1.0, 2)}
    """(scale, digits) of headline metrics that are no rates (the others: percent, 2 digits)."""

    def measure(self, model: nn.Module, test: Dataset, evaluation: Any, batch_size: int,
                device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        start = time.perf_counter()
        if test.is_regression:
            pred = predict_logits(model, test.x, batch_size, device, desc=f"{name} clean test")[:, 0]
            out = regression_metrics(pred, test.y)
        else:
            pred = predict(model, test.x, batch_size, device, desc=f"{name} clean test")
            out = clean_metrics(pred, test, _rejects(model))
        out["eval_seconds"] = time.perf_counter() - start
        return out, {"clean": pred}

    def describe(self, evaluation: Any) -> dict[str, Any]:
        return {}
