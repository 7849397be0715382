"""Metrics: pure functions of predictions, labels and masks (easy to check by hand).

Definitions follow BadNets (Gu et al. 2017): clean error per class on the clean test
set; backdoor error per class = share of triggered test images of that (true) class
*not* given the attacker's label; attack success rate = 1 - overall backdoor error.
"""
from __future__ import annotations

import numpy as np
import torch


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def accuracy(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Share of rows with ``pred == y`` (NaN for no rows).

    >>> accuracy(np.array([1, 2, 3]), np.array([1, 2, 0]))
    0.6666666666666666
    """
    p, t = _np(pred), _np(y)
    return float((p == t).mean()) if len(t) else float("nan")


def confusion_matrix(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]`` = number of rows with true class i predicted as j.

    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    p, t = _np(pred).astype(np.int64), _np(y).astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_error(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, wanted: torch.Tensor | np.ndarray,
                    num_classes: int) -> np.ndarray:
    """For each true class c: share of rows of class c where ``pred != wanted`` (NaN if none).

    Clean error: ``wanted = y``. Backdoor error: ``wanted`` = the attacker's labels.

    >>> per_class_error(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 3).tolist()
    [0.5, 0.5, nan]
    """
    p, t, w = _np(pred), _np(y).astype(np.int64), _np(wanted)
    wrong = np.bincount(t, weights=(p != w).astype(np.float64), minlength=num_classes)
    count = np.bincount(t, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, wrong / np.maximum(count, 1), np.nan)


def attack_success_rate(pred: torch.Tensor | np.ndarray, wanted: torch.Tensor | np.ndarray) -> float:
    """Share of triggered rows classified as the attacker wants (NaN for no rows).

    >>> attack_success_rate(np.array([3, 3, 1]), np.array([3, 3, 3]))
    0.6666666666666666
    """
    return accuracy(pred, wanted)


def mean_class_error(errors: np.ndarray) -> float:
    """Unweighted mean over classes that have rows (the seed table's average row)."""
    valid = errors[~np.isnan(errors)]
    return float(valid.mean()) if len(valid) else float("nan")
