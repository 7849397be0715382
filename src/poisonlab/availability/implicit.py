"""The learners gradient poisoning differentiates: each fits itself exactly on the training rows,
gives the attacker's validation loss, and the gradient of that loss with respect to chosen
training inputs through the learner's optimality conditions (labels fixed).

* :class:`SVMLearner`: scikit-learn ``SVC`` (linear or RBF kernel), differentiated through the
  KKT conditions of its margin support vectors (Biggio, Nelson & Laskov, "Poisoning Attacks
  against Support Vector Machines", ICML 2012, arXiv 1206.6389): with ``S`` the margin
  support vectors (``0 < alpha < C``) and ``Q_ij = y_i y_j K(x_i, x_j)``, moving the poison
  ``x_c`` keeps ``y_s f(x_s) = 1`` on ``S`` and ``sum_j y_j alpha_j = 0``, so
  ``[[Q_SS, y_S], [y_S^T, 0]] [d alpha_S; d b] = -[y_S d_{x_c}(sum_j alpha_j y_j K(x_s, x_j)); 0]``.
  Instead of solving this for ``d alpha / d x_c`` (one right-hand side per input feature) the
  attack solves the same symmetric system once for the adjoint ``u`` of the validation hinge
  loss, which gives the gradient of every poison at once. A poison in ``S`` (its own ``alpha``
  moves too) is handled exactly; an error vector (``alpha = C``) keeps its ``alpha``; a poison
  with ``alpha = 0`` (not a support vector) has a zero gradient. Multiclass: one-vs-rest, the
  attacker's loss the sum of the binary hinge losses.
* :class:`SmoothLearner`: l2-regularised logistic regression (binary or multinomial, as
  scikit-learn's ``LogisticRegression``: ``C sum_i loss_i + ||W||^2 / 2``, intercept
  unpenalised) fitted by damped Newton, and ridge regression on ``+-1`` targets (one column for
  two classes, ``2 onehot - 1`` else, as ``RidgeClassifier``: ``sum_i ||t_i - f(x_i)||^2 +
  alpha ||W||^2``) in closed form. Implicit differentiation of the training objective ``J``:
  ``d theta / d x_c = -H^-1 d^2 J / d theta d x_c``, so ``d L_val / d x_c =
  -d/d x_c [v^T grad_theta J]`` with ``v = H^-1 grad_theta L_val`` solved by Cholesky on the
  exact Hessian (conjugate gradients on exact Hessian-vector products past 3,000 parameters).
  The multinomial intercepts are defined up to a common shift: ``H + n n^T`` (``n`` that
  shift) is solved, which changes nothing orthogonal to it (Demontis et al., "Why Do
  Adversarial Attacks Transfer?", USENIX Security 2019, differentiate these learners alike).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ..errors import PoisonlabError
from ..targeted.influence import conjugate_gradient

DENSE_LIMIT = 3000
"""Parameters up to which the smooth learners' Hessian is built and factorised."""
ALPHA_EPS = 1e-8
"""A dual coefficient within ``ALPHA_EPS * C`` of 0 or ``C`` is at that bound."""


@dataclass(frozen=True)
class SurrogateSpec:
    """The attacker's learner: ``svm`` (C, kernel linear|rbf, gamma), ``logistic`` (C), ``ridge`` (alpha)."""

    learner: str
    C: float = 1.0
    kernel: str = "linear"
    gamma: float | None = None
    alpha: float = 1.0

    def describe(self) -> dict[str, Any]:
        if self.learner == "svm":
            return {"learner": "svm", "C": self.C, "kernel": self.kernel,
                    **({"gamma": self.gamma} if self.kernel == "rbf" else {})}
        return {"learner": self.learner, **({"C": self.C} if self.learner == "logistic" else {"alpha": self.alpha})}


def make_learner(spec: SurrogateSpec, num_classes: int, x: np.ndarray) -> SVMLearner | SmoothLearner:
    """The learner of ``spec`` for ``num_classes`` classes; an RBF ``gamma`` left unset is
    scikit-learn's ``scale``, ``1 / (D var(x))``, on the clean training inputs ``x``."""
    if spec.learner == "svm":
        gamma = spec.gamma
        if spec.kernel == "rbf" and gamma is None:
            var = float(x.var())
            gamma = 1.0 / (x.shape[1] * var) if var > 0 else 1.0
        return SVMLearner(spec.C, spec.kernel, gamma, num_classes)
    return SmoothLearner(spec.learner, spec.C if spec.learner == "logistic" else spec.alpha, num_classes)


# -- support vector machines -----------------------------------------------------------------
class SVMLearner:
    """``SVC`` with a linear or RBF kernel, one-vs-rest past two classes (see module docstring)."""

    def __init__(self, C: float, kernel: str, gamma: float | None, num_classes: int, tol: float = 1e-7) -> None:
        self.C, self.kernel, self.gamma, self.num_classes, self.tol = float(C), kernel, gamma, num_classes, tol

    def signs(self, y: np.ndarray) -> list[np.ndarray]:
        """The +-1 labels of each binary problem (class 1 positive; one per class past two)."""
        if self.num_classes == 2:
            return [np.where(y == 1, 1.0, -1.0)]
        return [np.where(y == k, 1.0, -1.0) for k in range(self.num_classes)]

    def kernel_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.kernel == "linear":
            return a @ b.T
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-self.gamma * np.maximum(sq, 0.0))

    def weighted_kernel_gradient(self, xa: np.ndarray, w: np.ndarray, xp: np.ndarray) -> np.ndarray:
        """``sum_i w_i d K(xa_i, x) / d x`` at every row ``x`` of ``xp``: (len(xp), D)."""
        if self.kernel == "linear":
            return np.broadcast_to(w @ xa, xp.shape).copy()
        wk = w[:, None] * self.kernel_matrix(xa, xp)  # (len(xa), len(xp))
        return 2 * self.gamma * (wk.T @ xa - wk.sum(0)[:, None] * xp)

    def fit(self, x: np.ndarray, y: np.ndarray, warm: Any = None) -> tuple[np.ndarray, list]:
        """The training inputs and, per binary problem, the +-1 labels, every row's ``alpha`` and
        the intercept ``b`` (``x`` is kept, not copied: the caller never writes to it).
        libsvm keeps its kernel values in single precision; with its support sets fixed, the KKT
        system of the margin vectors is solved again in double precision (kept when the
        ``alpha`` stay strictly inside ``(0, C)``), so the attacker's loss is smooth to ~1e-12."""
        from sklearn.svm import SVC

        fits = []
        for s in self.signs(y):
            if (s > 0).all() or (s < 0).all():
                raise PoisonlabError("the SVM surrogate needs training rows of every class; one class has none")
            est = SVC(C=self.C, kernel=self.kernel, gamma=self.gamma if self.kernel == "rbf" else "scale",
                      tol=self.tol, shrinking=False)
            est.fit(x, s)
            alpha = np.zeros(len(x))
            alpha[est.support_] = np.abs(est.dual_coef_[0])
            alpha[alpha >= (1 - ALPHA_EPS) * self.C] = self.C
            alpha[alpha <= ALPHA_EPS * self.C] = 0.0
            fits.append((s, *self._polish(x, s, alpha, float(est.intercept_[0]))))
        return x, fits

    def _margin(self, alpha: np.ndarray) -> np.ndarray:
        return np.flatnonzero((alpha > ALPHA_EPS * self.C) & (alpha < (1 - ALPHA_EPS) * self.C))

    def _system(self, xs: np.ndarray, ss: np.ndarray) -> np.ndarray:
        """``[[Q_SS, y_S], [y_S^T, 0]]`` of the margin vectors ``xs`` with labels ``ss``."""
        m = len(ss)
        system = np.zeros((m + 1, m + 1))
        system[:m, :m] = ss[:, None] * ss[None, :] * self.kernel_matrix(xs, xs)
        system[:m, m] = system[m, :m] = ss
        return system

    def _polish(self, x: np.ndarray, s: np.ndarray, alpha: np.ndarray, b: float) -> tuple[np.ndarray, float]:
        margin = self._margin(alpha)
        if not len(margin):
            return alpha, b
        bound = np.flatnonzero(alpha == self.C)
        ss = s[margin]
        rest = self.kernel_matrix(x[margin], x[bound]) @ (self.C * s[bound]) if len(bound) else 0.0
        rhs = np.concatenate([1.0 - ss * rest, [-self.C * s[bound].sum()]])
        sol = _solve_symmetric(self._system(x[margin], ss), rhs)
        if np.isfinite(sol).all() and (sol[:-1] > 0).all() and (sol[:-1] < self.C).all():
            alpha = alpha.copy()
            alpha[margin] = sol[:-1]
            return alpha, float(sol[-1])
        return alpha, b

    def scores(self, fit: tuple[np.ndarray, list], x: np.ndarray) -> np.ndarray:
        """Decision values of every problem at ``x``: (len(x), problems)."""
        train, out = fit[0], []
        for s, alpha, b in fit[1]:
            on = np.flatnonzero(alpha)
            out.append(self.kernel_matrix(x, train[on]) @ (alpha[on] * s[on]) + b)
        return np.stack(out, 1)

    def loss(self, fit: tuple[np.ndarray, list], xv: np.ndarray, yv: np.ndarray) -> float:
        """Mean hinge loss on the validation rows (summed over the one-vs-rest problems)."""
        f = self.scores(fit, xv)
        return float(sum(np.maximum(0.0, 1 - s * f[:, k]).mean() for k, s in enumerate(self.signs(yv))))

    def predict(self, fit: tuple[np.ndarray, list], x: np.ndarray) -> np.ndarray:
        f = self.scores(fit, x)
        return (f[:, 0] > 0).astype(np.int64) if self.num_classes == 2 else f.argmax(1)

    def gradient(self, fit: tuple[np.ndarray, list], x: np.ndarray, y: np.ndarray, rows: np.ndarray, xv: np.ndarray,
                 yv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``d loss / d x_c`` for the training rows ``rows`` (refit held to the KKT conditions) and
        whether each is zero because the row is no support vector of any problem."""
        xp = x[rows]
        grad = np.zeros_like(xp)
        not_sv = np.ones(len(rows), dtype=bool)
        scores = self.scores(fit, xv)
        for (s, alpha, _), sv, f in zip(fit[1], self.signs(yv), scores.T, strict=True):
            a = np.where(1 - sv * f > 0, -sv, 0.0) / len(xv)  # d mean hinge / d f(x_k)
            margin = self._margin(alpha)
            xs, ss, m = x[margin], s[margin], len(margin)
            rhs = np.concatenate([ss * (self.kernel_matrix(xv, xs).T @ a), [a.sum()]])
            u = _solve_symmetric(self._system(xs, ss), rhs)[:m] * ss  # u_s y_s
            ac = alpha[rows] * s[rows]
            # the direct term and the other margin vectors' rows (each scaled by alpha_c y_c) ...
            part = self.weighted_kernel_gradient(xv, a, xp) - self.weighted_kernel_gradient(xs, u, xp)
            pos = {int(r): i for i, r in enumerate(margin)}
            own = np.array([pos.get(int(r), -1) for r in rows])
            inside = own >= 0
            if self.kernel == "linear":  # the sum over S above included the poison's own row
                part[inside] += u[own[inside], None] * xp[inside]
            g = ac[:, None] * part
            if inside.any():  # ... and a margin poison's own KKT row, where every term moves with x_c
                on = np.flatnonzero(alpha)
                own_row = self.weighted_kernel_gradient(x[on], alpha[on] * s[on], xp[inside])
                if self.kernel == "linear":
                    own_row += ac[inside, None] * xp[inside]
                g[inside] -= u[own[inside], None] * own_row
            grad += g
            not_sv &= alpha[rows] == 0
        return grad, not_sv


def _solve_symmetric(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` by an LDL^T solve of the symmetric KKT matrix; least squares when it is singular
    (more margin vectors than a linear kernel's rank)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # checked just below
            out = scipy.linalg.solve(a, b, assume_a="sym")
        if np.isfinite(out).all() and np.allclose(a @ out, b, rtol=1e-8, atol=1e-10 * (1 + np.abs(b).max())):
            return out
    except (np.linalg.LinAlgError, ValueError):
        pass
    return np.linalg.lstsq(a, b, rcond=None)[0]


# -- logistic and ridge regression ------------------------------------------------------------
class SmoothLearner:
    """Logistic (binary or multinomial) or ridge regression, parameters ``theta`` (K, D + 1), the
    intercepts last (see module docstring)."""

    def __init__(self, kind: str, strength: float, num_classes: int) -> None:
        self.kind, self.num_classes = kind, num_classes
        self.k = 1 if num_classes == 2 else num_classes
        # J = weight * sum_i loss_i + lam / 2 ||W||^2
        self.weight, self.lam = (float(strength), 1.0) if kind == "logistic" else (1.0, 2.0 * float(strength))

    # the per-row loss and its curvature in the scores z = x~ theta^T
    def targets(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "logistic":
            return y.double() if self.k == 1 else y.long()
        if self.k == 1:
            return (2.0 * y.double() - 1.0)[:, None]
        return 2.0 * torch.nn.functional.one_hot(y.long(), self.k).double() - 1.0

    def row_loss(self, theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = x @ theta[:, :-1].T + theta[:, -1]
        if self.kind == "ridge":
            return ((z - t) ** 2).sum(1)
        if self.k == 1:
            return torch.nn.functional.softplus(z[:, 0]) - t * z[:, 0]
        return torch.logsumexp(z, 1) - z.gather(1, t[:, None])[:, 0]

    def curvature(self, z: torch.Tensor) -> torch.Tensor:
        """``d^2 loss / d z^2`` per row: (N, K, K)."""
        if self.kind == "ridge":
            return 2.0 * torch.eye(self.k, dtype=z.dtype).expand(len(z), self.k, self.k)
        if self.k == 1:
            p = torch.sigmoid(z)
            return (p * (1 - p))[:, :, None]
        p = torch.softmax(z, 1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def _reg(self, d: int) -> torch.Tensor:
        r = torch.full((self.k, d + 1), self.lam, dtype=torch.float64)
        r[:, -1] = 0.0
        return r

    def _shift(self, d: int) -> torch.Tensor | None:
        """The multinomial intercepts' common shift (unit norm), None for one score."""
        if self.kind != "logistic" or self.k == 1:
            return None
        n = torch.zeros(self.k, d + 1, dtype=torch.float64)
        n[:, -1] = 1.0 / self.k ** 0.5
        return n

    def solver(self, theta: torch.Tensor, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``g -> H^-1 g`` for the exact Hessian of ``J`` at ``theta`` (``H + n n^T`` with the shift)."""
        n_rows, d = x.shape
        xt = torch.cat([x, torch.ones(n_rows, 1, dtype=torch.float64)], 1)
        curv = self.curvature(xt @ theta.T) * self.weight
        reg, shift = self._reg(d).reshape(-1), self._shift(d)
        size = self.k * (d + 1)
        if self.kind == "ridge":  # one block per output column
            chol = torch.linalg.cholesky(curv[0, 0, 0] * xt.T @ xt + torch.diag(reg[: d + 1]))
            return lambda g: torch.cholesky_solve(g.T, chol).T
        if size <= DENSE_LIMIT:
            blocks = xt.T @ (curv.reshape(n_rows, -1, 1) * xt[:, None, :]).reshape(n_rows, -1)  # (a, k l b)
            h = blocks.reshape(d + 1, self.k, self.k, d + 1).permute(1, 0, 2, 3).reshape(size, size) + torch.diag(reg)
            if shift is not None:
                h += torch.outer(shift.reshape(-1), shift.reshape(-1))
            chol = torch.linalg.cholesky(h)
            return lambda g: torch.cholesky_solve(g.reshape(-1, 1), chol).reshape(self.k, d + 1)

        def hvp(u: torch.Tensor) -> torch.Tensor:
            v = u.reshape(self.k, d + 1)
            zu = torch.einsum("ikl,il->ik", curv, xt @ v.T)
            out = zu.T @ xt + reg.reshape(self.k, d + 1) * v
            if shift is not None:
                out = out + (shift * v).sum() * shift
            return out.reshape(-1)

        return lambda g: conjugate_gradient(hvp, g.reshape(-1), 10 * size, 1e-12).reshape(self.k, d + 1)

    def objective(self, theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.weight * self.row_loss(theta, x, t).sum() + 0.5 * (self._reg(x.shape[1])[:, :-1]
                                                                         * theta[:, :-1] ** 2).sum()

    def _objective_grad(self, theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[float, torch.Tensor]:
        th = theta.detach().clone().requires_grad_(True)
        j = self.objective(th, x, t)
        (g,) = torch.autograd.grad(j, th)
        return float(j.detach()), g

    def fit(self, x: np.ndarray, y: np.ndarray, warm: torch.Tensor | None = None) -> torch.Tensor:
        """The exact minimiser of ``J``: closed form for ridge; for logistic regression damped Newton
        (from ``warm`` when given; the factorised Hessian is kept once the steps are below 1e-3,
        where it barely changes) until the step is below 1e-11 of the parameters or the gradient
        below 1e-12 of ``C N``."""
        xs, yt = torch.from_numpy(x), torch.from_numpy(y)
        t = self.targets(yt)
        theta = torch.zeros(self.k, x.shape[1] + 1, dtype=torch.float64) if warm is None else warm.clone()
        if self.kind == "ridge":
            return theta - self.solver(theta, xs)(self._objective_grad(theta, xs, t)[1])
        solve, moved = None, float("inf")
        for _ in range(200):
            j, g = self._objective_grad(theta, xs, t)
            if float(g.abs().max()) <= 1e-12 * (1 + self.weight * len(x)):
                break
            if solve is None or moved > 1e-3 * (1 + float(theta.abs().max())):
                solve = self.solver(theta, xs)
            step = solve(g)
            size, slope = 1.0, float((g * step).sum())
            while size > 1e-10:
                # Armijo, allowing for rounding of J near the optimum (where the full step is right)
                if self._objective_grad(theta - size * step, xs, t)[0] <= j - 1e-4 * size * slope + 1e-13 * (1 + abs(j)):
                    break
                size /= 2
            theta = theta - size * step
            moved = float((size * step).abs().max())
            if moved <= 1e-11 * (1 + float(theta.abs().max())) or size <= 1e-10:
                break
        return theta

    def scores(self, theta: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        xs = torch.from_numpy(x)
        return xs @ theta[:, :-1].T + theta[:, -1]

    def loss(self, theta: torch.Tensor, xv: np.ndarray, yv: np.ndarray) -> float:
        """Mean log loss (logistic) or mean squared error summed over the outputs (ridge)."""
        return float(self.row_loss(theta, torch.from_numpy(xv), self.targets(torch.from_numpy(yv))).mean())

    def predict(self, theta: torch.Tensor, x: np.ndarray) -> np.ndarray:
        z = self.scores(theta, x)
        return (z[:, 0] > 0).long().numpy() if self.k == 1 else z.argmax(1).numpy()

    def gradient(self, theta: torch.Tensor, x: np.ndarray, y: np.ndarray, rows: np.ndarray, xv: np.ndarray,
                 yv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``d loss / d x_c = -weight d/d x_c [v^T grad_theta loss(x_c)]``, ``v = H^-1 grad_theta L_val``."""
        th = theta.detach().clone().requires_grad_(True)
        lv = self.row_loss(th, torch.from_numpy(xv), self.targets(torch.from_numpy(yv))).mean()
        (g,) = torch.autograd.grad(lv, th)
        v = self.solver(theta, torch.from_numpy(x))(g)
        xp = torch.from_numpy(x[rows]).clone().requires_grad_(True)
        th = theta.detach().clone().requires_grad_(True)
        lt = self.weight * self.row_loss(th, xp, self.targets(torch.from_numpy(y[rows]))).sum()
        (gt,) = torch.autograd.grad(lt, th, create_graph=True)
        (gx,) = torch.autograd.grad((gt * v).sum(), xp)
        return -gx.numpy(), np.zeros(len(rows), dtype=bool)
