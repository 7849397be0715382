"""StatP, the statistical poisoning of regression (Jagielski et al., "Manipulating Machine
Learning: Poisoning Attacks and Countermeasures for Regression Learning", IEEE S&P 2018, arXiv
1804.00308, Sec. III-C): a black-box attack that needs only the training data's statistics.

``round(rate * N)`` poisons are drawn from the multivariate normal with the mean and
covariance of the clean training features, then put in the feature box (``[0, 1]`` when the
training features lie in it, else their per-feature range): a binary feature (two training
values) is rounded to the nearer of its two values, any other clipped to the box. Each
poison's response is the end of the response range (``[0, 1]``, else the training
responses' range) farther from the clean reference's prediction for it: the paper's
``round(1 - y_hat)`` on ``[0, 1]``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..data.base import Dataset
from ..errors import PoisonlabError
from .base import AvailabilityAttack, add_rows
from .regression import arrays, far_responses, need_regression, unit_or_range


@dataclass
class StatPConfig:
    """``attack:`` keys of StatP."""

    name: str = "statp"
    rate: float = 0.1
    """Poisons, as a share of the clean training rows (the paper: 4-20%)."""


def statp_points(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` feature rows drawn from ``N(mean(x), cov(x))`` and put in the feature box (see module docstring)."""
    low, high = unit_or_range(x)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]) if len(x) > 1 else np.zeros((x.shape[1],) * 2)
    draw = rng.multivariate_normal(x.mean(0), cov, size=n, method="eigh", check_valid="ignore")
    out = np.clip(draw, low, high)
    for j in range(x.shape[1]):
        values = np.unique(x[:, j])
        if len(values) == 2:  # binary: the nearer of its two values
            out[:, j] = np.where(np.abs(draw[:, j] - values[0]) <= np.abs(draw[:, j] - values[1]),
                                 values[0], values[1])
    return out


@ATTACKS.register("statp")
class StatP(AvailabilityAttack):
    """Jagielski et al.'s StatP (see module docstring)."""

    name = "statp"
    config_class = StatPConfig
    regression = True

    def check(self, train: Dataset) -> None:
        need_regression(train, self.name)
        super().check(train)

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        start = time.perf_counter()
        model = getattr(reference, "model", None)
        if model is None:
            raise PoisonlabError("statp sets each poison's response from the clean reference's prediction; none given")
        x, y = arrays(train)
        xp = statp_points(x, n_poison, rng)
        xt = torch.from_numpy(xp).to(train.x.dtype)
        # float32 rounding may push a value past the box by one ulp: clip again in the data's dtype
        lo, hi = unit_or_range(x)
        xt = torch.minimum(torch.maximum(xt, torch.from_numpy(lo).to(xt.dtype)), torch.from_numpy(hi).to(xt.dtype))
        with torch.no_grad():
            pred = model(xt.reshape(n_poison, *train.x.shape[1:]))[:, 0].double().numpy()
        ylo, yhi = unit_or_range(y)
        yp = far_responses(pred, float(ylo[0]), float(yhi[0]))
        source = torch.from_numpy(rng.choice(len(train), size=n_poison).astype(np.int64))  # meta rows to copy
        result = add_rows(train, source, xt.reshape(n_poison, *train.x.shape[1:]), torch.from_numpy(yp))
        binary = int(sum(len(np.unique(x[:, j])) == 2 for j in range(x.shape[1])))
        return result, {"n_poison": n_poison, "binary_features": binary, "response_low": float(ylo[0]),
                        "response_high": float(yhi[0]), "share_high": float((yp == yhi[0]).mean()),
                        "seconds": time.perf_counter() - start}
