"""Influence-function poisoning (Koh & Liang, "Understanding Black-box Predictions via Influence
Functions", ICML 2017, arXiv 1703.04730, Sec. 2.2 and 5.2) of a binary logistic regression.

For the model ``theta = (w, b)`` minimising ``C sum_i l(z_i) + ||w||^2 / 2`` (scikit-learn's
``LogisticRegression``), the influence of moving training input ``x_i`` by ``delta`` on the
target's loss is ``-grad_theta l(t)^T H^-1 C grad_x grad_theta l(z_i) delta``, with ``H`` the
exact Hessian of the objective (intercept unpenalised). ``v = H^-1 grad_theta l(t)`` is solved
by conjugate gradients on Hessian-vector products; the gradient of the target loss with
respect to every training input follows by autograd. The ``k`` training rows whose inputs
influence the target's loss (at its true label) most (largest l1 norm) are moved by signed
steps of ``eps / steps`` inside the l-inf box of radius ``eps`` around them (and the
training set's feature range); after each step the local model is refitted and the influence
recomputed. Labels stay. ``mode: random`` is the control: ``k`` random rows moved by ``+-eps``
at random (the same norm). :func:`removal_influence` is the paper's ``I_up,loss``: the
predicted change of the target's loss when a training row is removed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..attacks.base import ATTACKS
from ..checks import need_int
from ..data.base import Dataset
from ..errors import PoisonlabError
from .targets import TargetedAttack, need_fraction, perturbation_norms


@dataclass
class InfluenceConfig:
    """``attack:`` keys of influence poisoning."""

    name: str = "influence"
    poison_class: int | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    k: int = 10
    eps: float = 0.1
    steps: int = 1
    mode: Literal["influence", "random"] = "influence"
    cg_iterations: int = 200


def logistic_parameters(model: Any) -> tuple[torch.Tensor, float, float]:
    """``(theta = [w, b], C, n_features)`` of a fitted binary scikit-learn LogisticRegression in an
    EstimatorModel; one-line error for any other model."""
    from sklearn.linear_model import LogisticRegression

    est = getattr(model, "estimator", None)
    if not isinstance(est, LogisticRegression) or not hasattr(est, "coef_") or est.coef_.shape[0] != 1:
        raise PoisonlabError("influence poisoning needs the exact Hessian of a binary logistic regression: "
                             "model: logistic-regression on two classes (e.g. data.classes: [1, 7])")
    penalty = getattr(est, "penalty", "l2")
    l2 = penalty == "l2" or (penalty == "deprecated" and not getattr(est, "l1_ratio", 0.0))  # scikit-learn >= 1.8
    if not (l2 or penalty is None) or not est.fit_intercept:
        raise PoisonlabError("influence poisoning expects LogisticRegression with an l2 penalty (or none) and an "
                             "intercept")
    c = float(est.C) if l2 else float("inf")
    theta = torch.tensor(np.concatenate([est.coef_[0], est.intercept_]), dtype=torch.float64)
    return theta, c, est.coef_.shape[1]


def _signs(y: torch.Tensor) -> torch.Tensor:
    return y.double() * 2 - 1


def point_gradients(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_theta l(z_i)`` of every row (N, D + 1) for the logistic loss ``log(1 + exp(-s z))``."""
    s = _signs(y)
    xt = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return (-s * torch.sigmoid(-s * (xt @ theta)))[:, None] * xt


def hessian_vector_product(theta: torch.Tensor, x: torch.Tensor, c: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> H u`` for ``H = C sum_i p_i (1 - p_i) x~_i x~_i^T + diag(1, ..., 1, 0)``."""
    xt = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    p = torch.sigmoid(xt @ theta)
    weight = (p * (1 - p)) * (c if np.isfinite(c) else 1.0)
    reg = torch.ones(len(theta), dtype=torch.float64)
    reg[-1] = 0.0
    if not np.isfinite(c):
        reg[:] = 0.0
    return lambda u: xt.T @ (weight * (xt @ u)) + reg * u


def conjugate_gradient(hvp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, iterations: int,
                       tolerance: float = 1e-12) -> torch.Tensor:
    """``H^-1 g`` by conjugate gradients (``H`` symmetric positive definite, given as products)."""
    v = torch.zeros_like(g)
    r = g.clone()
    p = r.clone()
    rs = float(r @ r)
    for _ in range(iterations):
        if rs <= tolerance * tolerance * float(g @ g):
            break
        hp = hvp(p)
        alpha = rs / float(p @ hp)
        v += alpha * p
        r -= alpha * hp
        new = float(r @ r)
        p = r + (new / rs) * p
        rs = new
    return v


def removal_influence(theta: torch.Tensor, c: float, x: torch.Tensor, y: torch.Tensor, x_t: torch.Tensor,
                      y_t: int, iterations: int = 200) -> torch.Tensor:
    """Predicted change of the target's loss when each training row is removed (Koh & Liang's
    ``-I_up,loss / n`` in this objective's scale): ``C grad l(t)^T H^-1 grad l(z_i)``."""
    g_t = point_gradients(theta, x_t[None], torch.tensor([y_t]))[0]
    v = conjugate_gradient(hessian_vector_product(theta, x, c), g_t, iterations)
    return (c if np.isfinite(c) else 1.0) * (point_gradients(theta, x, y) @ v)


def input_influence(theta: torch.Tensor, c: float, x: torch.Tensor, y: torch.Tensor, x_t: torch.Tensor, y_t: int,
                    iterations: int = 200) -> torch.Tensor:
    """``d l(t) / d x_i`` for every training row (N, D): how moving each input moves the target's loss."""
    g_t = point_gradients(theta, x_t[None], torch.tensor([y_t]))[0]
    v = conjugate_gradient(hessian_vector_product(theta, x, c), g_t, iterations)
    xs = x.double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((point_gradients(theta, xs, y) @ v).sum(), xs)
    return -(c if np.isfinite(c) else 1.0) * grad


@ATTACKS.register("influence")
class InfluencePoisoning(TargetedAttack):
    """Koh & Liang's training-input attack on a binary logistic regression (see module docstring)."""

    name = "influence"
    config_class = InfluenceConfig

    def validate(self) -> None:
        need_int(self.cfg.k, "attack.k", 1, 10_000_000, "training rows")
        need_fraction(self.cfg.eps, "attack.eps")
        need_int(self.cfg.steps, "attack.steps", 1, 10_000)
        need_int(self.cfg.cg_iterations, "attack.cg_iterations", 1, 100_000)
        if self.n_targets() != 1:
            raise PoisonlabError("influence poisoning attacks one target per run; set attack.targets.n: 1")

    def check(self, train: Dataset) -> None:
        if train.num_classes != 2:
            raise PoisonlabError(f"influence poisoning attacks a binary logistic regression; the data set has "
                                 f"{train.num_classes} classes (keep two with data.classes: [a, b])")
        if self.cfg.k > len(train):
            raise PoisonlabError(f"attack.k = {self.cfg.k} is more than the {len(train)} training rows; lower it")
        super().check(train)

    def poison_count(self, train: Dataset) -> int | None:
        return None  # any class's rows may be moved

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        c = self.cfg
        local = copy.deepcopy(reference.model)
        theta, C, _ = logistic_parameters(local)
        shape = train.x.shape[1:]
        x0 = train.x.reshape(len(train), -1).double()
        lo, hi = x0.min(0).values, x0.max(0).values  # the feature box of the training set
        t, y_t = target_x.reshape(-1).double(), 1 - poison_class  # the target's true class
        if c.mode == "random":
            rows = torch.from_numpy(np.sort(rng.choice(len(train), size=c.k, replace=False)).astype(np.int64))
            signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=(c.k, x0.shape[1])))
            new = torch.minimum(torch.maximum(x0[rows] + c.eps * signs, lo), hi)
            return rows, new.reshape(c.k, *shape).to(train.x.dtype), {
                "n_poison_images": c.k, **{f"perturbation_{k}": v for k, v in perturbation_norms(new, x0[rows]).items()}}
        grad = input_influence(theta, C, x0, train.y, t, y_t, c.cg_iterations)
        rows = torch.sort(torch.argsort(grad.abs().sum(1), descending=True, stable=True)[:c.k]).values
        x = x0.clone()
        losses = []
        for step in range(c.steps):
            if step:
                local.fit_arrays(x.reshape(len(x), *shape).float(), train.y, 2, reference.seed)
                theta, C, _ = logistic_parameters(local)
                grad = input_influence(theta, C, x, train.y, t, y_t, c.cg_iterations)
            losses.append(float(_loss(theta, t, y_t)))
            x[rows] = x[rows] + (c.eps / c.steps) * torch.sign(grad[rows])
            x[rows] = torch.minimum(torch.maximum(x[rows], x0[rows] - c.eps), x0[rows] + c.eps)
            x[rows] = torch.minimum(torch.maximum(x[rows], lo), hi)
        new = x[rows]
        return rows, new.reshape(c.k, *shape).to(train.x.dtype), {
            "n_poison_images": c.k, "target_loss_by_step": losses,
            **{f"perturbation_{k}": v for k, v in perturbation_norms(new, x0[rows]).items()}}


def _loss(theta: torch.Tensor, x: torch.Tensor, y: int) -> torch.Tensor:
    s = 2.0 * y - 1.0
    z = x @ theta[:-1] + theta[-1]
    return torch.nn.functional.softplus(-s * z)
