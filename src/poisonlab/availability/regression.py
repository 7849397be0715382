"""Linear regression learners for regression poisoning (Jagielski, Oprea, Biggio, Liu,
Nita-Rotaru, Li, "Manipulating Machine Learning: Poisoning Attacks and Countermeasures for
Regression Learning", IEEE S&P 2018, arXiv 1804.00308, Sec. III), and the helpers the
regression attacks share (feature and response boxes, the attacker's rows).

:class:`LinearLearner` fits, exactly, scikit-learn's objectives (intercept unpenalised),
written as ``J = 1/2 sum_i (w.x_i + b - y_i)^2 + l1 ||w||_1 + l2 / 2 ||w||^2``:

* ``ols`` (``LinearRegression``): ``l1 = l2 = 0``; least squares, the minimum-norm solution
  when ``X^T X`` is singular (as ``lstsq``);
* ``ridge`` (``Ridge``: ``||y - Xw||^2 + alpha ||w||^2``): ``l2 = alpha``;
* ``lasso`` (``Lasso``: ``1/(2n) ||y - Xw||^2 + alpha ||w||_1``): ``l1 = n alpha``;
* ``elastic-net`` (``ElasticNet``): ``l1 = n alpha rho``, ``l2 = n alpha (1 - rho)``.

Lasso and elastic net are solved by coordinate descent (scikit-learn's), then polished: with
the active set ``A`` (``w_j != 0``) and its signs ``s`` fixed, ``J`` is quadratic on ``A``, so
``(X~_A^T X~_A + l2 I_A) theta_A = X~_A^T y - l1 s`` is solved exactly (kept when the signs
and the inactive coordinates' optimality ``|x_j^T r| <= l1`` hold).

The gradient of the attacker's validation MSE ``W = 1/m sum_k (w.x_k + b - y_k)^2`` with
respect to a training row's features ``x_c`` and response ``y_c`` comes from the optimality
conditions ``grad_theta J = 0`` (implicit differentiation; the paper's Sec. III-B): with ``H``
the Hessian of ``J`` on the active coordinates and the intercept, ``v = H^-1 grad_theta W``
and ``r_c = w.x_c + b - y_c``, ``dW/dx_c = -((v.x~_c) w + r_c v_w)`` and ``dW/dy_c = v.x~_c``.
For lasso and elastic net this holds with the active set fixed (the paper's approximation: the
l1 term's gradient is the constant ``l1 s``; exact wherever the active set does not change);
``H`` singular (OLS on collinear columns) is solved by least squares.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import is_number, need_number, one_key
from ..errors import PoisonlabError, shown

LEARNERS = ("ols", "ridge", "lasso", "elastic-net")


@dataclass(frozen=True)
class RegressionSpec:
    """The attacker's learner: ``ols``, ``ridge`` (alpha), ``lasso`` (alpha), ``elastic-net`` (alpha, l1_ratio)."""

    learner: str
    alpha: float = 1.0
    l1_ratio: float = 0.5

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"learner": self.learner}
        if self.learner != "ols":
            out["alpha"] = self.alpha
        if self.learner == "elastic-net":
            out["l1_ratio"] = self.l1_ratio
        return out


def parse_spec(raw: Any) -> RegressionSpec | None:
    """``attack.surrogate`` as a :class:`RegressionSpec` (None for null); one-line errors."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("learner") not in LEARNERS:
        got = raw.get("learner") if isinstance(raw, dict) else raw
        raise PoisonlabError(f"attack.surrogate.learner must be one of {', '.join(LEARNERS)}, got {shown(got)}")
    learner = raw["learner"]
    allowed = {"ols": ("learner",), "ridge": ("learner", "alpha"), "lasso": ("learner", "alpha"),
               "elastic-net": ("learner", "alpha", "l1_ratio")}[learner]
    for key in raw:
        if key not in allowed:
            raise PoisonlabError(f"attack.surrogate.{one_key(key)} does not apply to learner {learner}; "
                                 f"its keys: {', '.join(allowed)}")
    if "alpha" in raw:
        need_number(raw["alpha"], "attack.surrogate.alpha", 0, 1e12, low_open=True)
    if "l1_ratio" in raw:
        need_number(raw["l1_ratio"], "attack.surrogate.l1_ratio", 0, 1, low_open=True)
    return RegressionSpec(learner, float(raw.get("alpha", 1.0)), float(raw.get("l1_ratio", 0.5)))


def infer_spec(model: Any) -> RegressionSpec:
    """The white-box learner of a fitted reference regressor; one-line error for any other model."""
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge

    est = getattr(model, "estimator", None)
    name = getattr(model, "name", type(model).__name__)
    fix = "set attack.surrogate: {learner: ols|ridge|lasso|elastic-net, alpha: ...}"
    if est is not None and not getattr(est, "fit_intercept", True):
        raise PoisonlabError(f"the attack differentiates linear regression with an intercept; model '{name}' has "
                             f"fit_intercept false; {fix}")
    if isinstance(est, ElasticNet) and not isinstance(est, Lasso):
        return RegressionSpec("elastic-net", float(est.alpha), float(est.l1_ratio))
    if isinstance(est, Lasso):
        return RegressionSpec("lasso", float(est.alpha))
    if isinstance(est, Ridge) and is_number(est.alpha):
        return RegressionSpec("ridge", float(est.alpha))
    if isinstance(est, LinearRegression):
        return RegressionSpec("ols")
    raise PoisonlabError(f"the attack needs a linear regression learner: model '{name}' is none of ols, "
                         f"ridge-regression, lasso, elastic-net; {fix}")


class LinearLearner:
    """OLS, ridge, lasso or elastic net fitted exactly, its validation MSE and implicit gradients
    (see module docstring). Training rows are ``z = [x, y]``: the response is the last column, so
    a poison's features and response move together in the optimiser."""

    def __init__(self, spec: RegressionSpec, optimize_response: bool = False) -> None:
        self.spec, self.optimize_response = spec, optimize_response
        self._cd: Any = None  # the coordinate-descent estimator, warm-started from its last fit

    def penalties(self, n: int) -> tuple[float, float]:
        """``(l1, l2)`` of ``J`` for ``n`` training rows."""
        s = self.spec
        if s.learner == "ols":
            return 0.0, 0.0
        if s.learner == "ridge":
            return 0.0, s.alpha
        rho = 1.0 if s.learner == "lasso" else s.l1_ratio
        return n * s.alpha * rho, n * s.alpha * (1 - rho)

    def fit(self, z: np.ndarray, y: Any = None, warm: Any = None) -> np.ndarray:
        """``theta = (w, b)`` minimising ``J`` on the rows ``z`` (features, then the response)."""
        x, t = z[:, :-1], z[:, -1]
        l1, l2 = self.penalties(len(z))
        if l1 == 0:
            return _quadratic(x, t, np.arange(x.shape[1]), 0.0, l2, None)
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import ElasticNet

        if self._cd is None or self._cd.coef_.shape != (x.shape[1],):
            rho = 1.0 if self.spec.learner == "lasso" else self.spec.l1_ratio
            self._cd = ElasticNet(alpha=self.spec.alpha, l1_ratio=rho, tol=1e-6, max_iter=5_000, warm_start=True)
            self._cd.coef_ = np.zeros(x.shape[1])
        est = self._cd
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(x, t)
        theta = np.concatenate([est.coef_, [est.intercept_]])
        active = np.flatnonzero(theta[:-1] != 0)
        signs = np.sign(theta[active])
        polished = _quadratic(x, t, active, l1, l2, signs)
        r = x @ polished[:-1] + polished[-1] - t
        inactive = np.setdiff1d(np.arange(x.shape[1]), active)
        ok = np.array_equal(np.sign(polished[active]), signs) and (
            not len(inactive) or np.abs(x[:, inactive].T @ r).max() <= l1 * (1 + 1e-9))
        return polished if ok else theta

    @staticmethod
    def predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x @ theta[:-1] + theta[-1]

    def loss(self, theta: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> float:
        """The attacker's objective: the mean squared error on ``(xv, yv)``."""
        return float(np.mean((self.predict(theta, xv) - yv) ** 2))

    def gradient(self, theta: np.ndarray, z: np.ndarray, y: Any, rows: np.ndarray, xv: np.ndarray,
                 yv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``dW / dz_c`` for the training rows ``rows`` (features, then the response: 0 unless
        ``optimize_response``), and which are zero (none here)."""
        x = z[:, :-1]
        d = x.shape[1]
        _, l2 = self.penalties(len(z))
        active = np.arange(d) if self.spec.learner in ("ols", "ridge") else np.flatnonzero(theta[:-1] != 0)
        cols = np.concatenate([active, [d]])  # the active weights and the intercept
        xa = np.concatenate([x[:, active], np.ones((len(x), 1))], 1)
        hess = xa.T @ xa
        hess[np.arange(len(active)), np.arange(len(active))] += l2
        err = self.predict(theta, xv) - yv
        xva = np.concatenate([xv[:, active], np.ones((len(xv), 1))], 1)
        g_w = 2.0 * xva.T @ err / len(xv)  # grad_theta W on the active coordinates
        v = _solve(hess, g_w)
        v_full = np.zeros(d + 1)
        v_full[cols] = v
        xc = x[rows]
        vx = xc @ v_full[:-1] + v_full[-1]  # v . x~_c
        rc = self.predict(theta, xc) - z[rows, -1]
        grad = np.zeros((len(rows), d + 1))
        grad[:, :-1] = -(vx[:, None] * theta[None, :-1] + rc[:, None] * v_full[None, :-1])
        if self.optimize_response:
            grad[:, -1] = vx
        return grad, np.zeros(len(rows), dtype=bool)


def _quadratic(x: np.ndarray, t: np.ndarray, active: np.ndarray, l1: float, l2: float,
               signs: np.ndarray | None) -> np.ndarray:
    """``theta`` minimising ``J`` with the weights outside ``active`` at 0 and, for ``l1 > 0``, the
    l1 term linear (``l1 * signs``): ``(X~_A^T X~_A + l2 I_A) theta_A = X~_A^T t - l1 s``."""
    d = x.shape[1]
    xa = np.concatenate([x[:, active], np.ones((len(x), 1))], 1)
    hess = xa.T @ xa
    hess[np.arange(len(active)), np.arange(len(active))] += l2
    rhs = xa.T @ t
    if signs is not None:
        rhs[:-1] -= l1 * signs
    sol = _solve(hess, rhs)
    theta = np.zeros(d + 1)
    theta[np.concatenate([active, [d]])] = sol
    return theta


RCOND = 1e-10
"""Eigenvalues of ``H`` below ``RCOND`` times the largest count as 0 (collinear columns, e.g. one-hot
groups beside the intercept: rounding leaves them tiny but positive)."""


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` for the symmetric positive (semi-)definite ``a``: Cholesky when ``a`` is well
    conditioned (its pivots' squared ratio above :data:`RCOND`), else the minimum-norm solution
    on the eigenvalues above it (singular ``a``: OLS on collinear columns, as ``lstsq`` fits it)."""
    import scipy.linalg

    try:
        factor = scipy.linalg.cho_factor(a)
        pivots = np.abs(np.diag(factor[0]))
        if pivots.min() ** 2 > RCOND * pivots.max() ** 2:
            return scipy.linalg.cho_solve(factor, b)
    except (np.linalg.LinAlgError, ValueError):
        pass
    vals, vecs = np.linalg.eigh(a)
    keep = vals > RCOND * max(float(vals.max()), 0.0)
    return vecs[:, keep] @ ((vecs[:, keep].T @ b) / vals[keep][:, None] if b.ndim == 2 else
                            (vecs[:, keep].T @ b) / vals[keep])


# -- shared by the regression attacks ----------------------------------------------------------
def unit_or_range(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column ``(low, high)``: ``[0, 1]`` when every value lies in it (the paper's scaled data),
    else the column's range."""
    a = a.reshape(len(a), -1)
    if a.size and a.min() >= 0 and a.max() <= 1:
        return np.zeros(a.shape[1]), np.ones(a.shape[1])
    return a.min(0), a.max(0)


def arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) and responses (N,) of a regression :class:`~poisonlab.data.base.Dataset`, float64."""
    import torch

    x = data.x.detach().to("cpu", torch.float64).reshape(len(data), -1).numpy()
    return x, data.y.detach().to("cpu", torch.float64).numpy()


def attacker_rows(train: Any, reference: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The attacker's objective rows: the validation rows (``reference.val``), else the clean training rows."""
    val = getattr(reference, "val", None)
    if val is not None and len(val):
        return (*arrays(val), "validation")
    return (*arrays(train), "training")


def need_regression(train: Any, attack: str) -> None:
    if not train.is_regression:
        raise PoisonlabError(f"attack '{attack}' poisons regression data (data.options.task: regression); "
                             "the data have classes")


def far_responses(pred: np.ndarray, low: float, high: float) -> np.ndarray:
    """For each prediction, the end of ``[low, high]`` farther from it (``high`` at the midpoint)."""
    return np.where(pred <= (low + high) / 2, high, low)
