"""OptP, the optimisation-based poisoning of linear regression (Jagielski et al.,
"Manipulating Machine Learning: Poisoning Attacks and Countermeasures for Regression Learning",
IEEE S&P 2018, arXiv 1804.00308, Sec. III-A/B, Algorithm 1).

``round(rate * N)`` poisons start as copies of random training rows with their responses
flipped (the paper's initialisation): ``init: inverse`` sets ``y -> low + high - y`` (``1 - y``
on ``[0, 1]``, InvFlip), ``init: boundary`` the end of the response range farther from ``y``
(``round(1 - y)``, BFlip). Their features (and, with ``optimize_response``, responses) then
climb the attacker's MSE on its clean validation rows (``reference.val``; the clean training
rows without them) by projected gradient ascent in the box (``[0, 1]`` when the training data
lie in it, else their range), the gradient taken through the learner's optimality conditions
(:class:`~poisonlab.availability.regression.LinearLearner`: closed form for OLS and ridge, the
active set for lasso and elastic net). The optimiser is gradient poisoning's
(:mod:`.gradient_poisoning`): the points in turn (``mode: sequential``, the paper's scheme)
over ``passes`` passes, each at most ``steps`` steps of a line search (``eta / 2``, ``eta``,
``2 eta``, then doubling or halving; the attacker's loss never falls), or all at once
(``mode: joint``). ``surrogate: null`` is white box: the reference regressor's learner and
penalty; a response is the last column of a poison's row, so both move in one step."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .base import AvailabilityAttack, add_rows
from .gradient_poisoning import _Ascent, _projection, check_ascent
from .regression import (LinearLearner, arrays, attacker_rows, far_responses, infer_spec, need_regression, parse_spec,
                         unit_or_range)


@dataclass
class OptPConfig:
    """``attack:`` keys of OptP."""

    name: str = "optp"
    rate: float = 0.1
    """Poisons, as a share of the clean training rows (the paper: 4-20%)."""
    surrogate: dict[str, Any] | None = None
    """``{learner: ols|ridge|lasso|elastic-net, alpha, l1_ratio}``; null: the reference regressor's."""
    init: Literal["inverse", "boundary"] = "inverse"
    optimize_response: bool = False
    """Move the poisons' responses too (within the response range), not only their features."""
    steps: int = 20
    passes: int = 1
    step_size: float = 0.05
    """The first step length, as a share of the box diagonal."""
    tol: float = 1e-6
    mode: Literal["sequential", "joint"] = "sequential"


def initial_responses(y: np.ndarray, init: str, low: float, high: float) -> np.ndarray:
    """The paper's flipped responses: ``low + high - y`` (inverse) or the farther end (boundary)."""
    return low + high - y if init == "inverse" else far_responses(y, low, high)


@ATTACKS.register("optp")
class OptP(AvailabilityAttack):
    """Jagielski et al.'s OptP (see module docstring)."""

    name = "optp"
    config_class = OptPConfig
    regression = True

    def validate(self) -> None:
        c = self.cfg
        check_ascent(c)
        if c.init not in ("inverse", "boundary"):
            raise PoisonlabError(f"attack.init must be inverse or boundary, got {shown(c.init)}")
        if not isinstance(c.optimize_response, bool):
            raise PoisonlabError(f"attack.optimize_response must be true or false, got {shown(c.optimize_response)}")
        self.spec = parse_spec(c.surrogate)

    def check(self, train: Dataset) -> None:
        need_regression(train, self.name)
        super().check(train)

    def check_model(self, model: Any) -> None:
        """Before any training: a white-box surrogate needs a linear regressor as the victim."""
        if self.spec is None:
            infer_spec(model)

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        start = time.perf_counter()
        shape = tuple(train.x.shape[1:])
        x, y = arrays(train)
        xv, yv, rows_kind = attacker_rows(train, reference)
        spec = self.spec or infer_spec(getattr(reference, "model", None))
        learner = LinearLearner(spec, self.cfg.optimize_response)
        low, high = unit_or_range(x)
        ylo, yhi = unit_or_range(y)
        zlow, zhigh = np.concatenate([low, ylo]), np.concatenate([high, yhi])
        project = _projection(zlow, zhigh, train.x.dtype)
        rows = np.sort(rng.choice(len(train), size=n_poison, replace=n_poison > len(train)))
        z = np.c_[x, y]
        zp = project(np.c_[x[rows], initial_responses(y[rows], self.cfg.init, float(ylo[0]), float(yhi[0]))])
        diag = float(np.linalg.norm((zhigh - zlow)[: len(low) + (1 if self.cfg.optimize_response else 0)]))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # thousands of small solves: threads only contend
            run = _Ascent(learner, (z, y), np.concatenate([z, zp]), np.concatenate([y, zp[:, -1]]),
                          len(train) + np.arange(n_poison), xv, yv, project, float(self.cfg.step_size) * diag,
                          float(self.cfg.tol))
            if self.cfg.mode == "sequential":
                run.sequential(self.cfg.passes, self.cfg.steps)
            else:
                run.joint(self.cfg.passes * self.cfg.steps)
        final = run.x[run.rows]
        result = add_rows(train, torch.from_numpy(rows), torch.from_numpy(final[:, :-1]).to(train.x.dtype)
                          .reshape(n_poison, *shape), torch.from_numpy(final[:, -1]))
        report = {"n_poison": n_poison, "mode": self.cfg.mode, "init": self.cfg.init, "surrogate": spec.describe(),
                  "optimize_response": self.cfg.optimize_response, "objective_rows": rows_kind,
                  "val_mse_clean": run.clean_loss, "val_mse_initial": run.curve[0], "val_mse_final": run.curve[-1],
                  "val_loss_curve": run.curve, "steps_per_point": run.steps_taken.tolist(), "fits": run.fits,
                  "perturbation_l2_mean": float(np.linalg.norm(final[:, :-1] - x[rows], axis=1).mean()),
                  "seconds": time.perf_counter() - start}
        return result, report
