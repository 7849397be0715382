"""Certified robustness to label flipping by randomized smoothing over the training labels.

After Rosenfeld, Winston, Ravikumar, Kolter, "Certified Robustness to Label-Flipping
Attacks via Randomized Smoothing", ICML 2020, arXiv 2002.03018 (binary case, linear
least-squares classifier on fixed features).

**Base classifier.** With training features ``X`` (n x d), labels ``y`` in {0, 1} and a
ridge penalty ``lam``, the regression output for a test point ``x`` is linear in the labels:
``score(x) = alpha(x) . y`` with ``alpha(x) = X (X^T X + lam I)^-1 x`` (:func:`ridge_alpha`;
add a column of ones to ``X`` for an intercept). The base classifier predicts class 1 iff
``score > 1/2`` and class 0 otherwise (a score of exactly 1/2 is class 0).

**Smoothing.** Every training label is flipped independently with probability ``q``
(noisy labels ``y~``); the smoothed classifier predicts class 1 iff
``p = P(alpha . y~ > 1/2) > 1/2``, else class 0.

**Certificate.** The smoothed class is certified at radius ``r`` when a Chernoff bound on its
failure probability, maximised over every set of at most ``r`` labels an adversary flips
*before* the noise, is below 1/2 (:mod:`poisonlab.defenses.certified_bound` holds the bound
``B_F(t)`` and its minimisation; one ``t`` serves every flip set, which only loosens the bound,
since ``min_t max_F >= max_F min_t``). Then every label vector within ``r`` flips keeps
``P(correct side) > 1/2``, so the smoothed prediction is unchanged. The paper turns its bound
on ``p`` into a radius with its own theorem for discrete label noise; this module instead
applies the Chernoff step directly to every label vector within ``r`` flips, which is simpler
to check by hand and never certifies more than is true (the tests compare it with exact
enumeration), but may certify less.

**Speed.** :class:`SmoothedRidge` fits once and predicts through the d-dimensional weights
of the expected score (no n x m alpha matrix), forming ``alpha`` only for the rows it
certifies. A yes/no certification (:func:`certify`, the radius search) stops its
minimisation early both ways: once a ``t`` gives a bound below 1/2 (certified), and once a
lower bound on the convex minimum, read off the golden-section points
(:func:`_convex_floor`), is above 1/2 (not certified: no ``t`` can do better). The answers
are those of the full search (a 1e-7 margin absorbs rounding); only the work on hopeless rows is cut.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np

from ..errors import PoisonlabError, shown
from .certified_bound import (
    _array,
    _check_alpha_y,
    _check_labels,
    _check_lam,
    _check_q,
    _check_r,
    _convex_floor,  # noqa: F401  (re-exported: tests read it here)
    _deterministic_margin,
    _expected_label,
    _min_log_bound,
    _setup,
    failure_bound,
    smoothed_prediction,
)

__all__ = ["SmoothedRidge", "certified_accuracy_curve", "certified_flips", "certified_radius", "certify",
           "curve_from_radii", "failure_bound", "ridge_alpha", "smoothed_prediction"]


def ridge_alpha(X_train: object, x_test: object, lam: float) -> np.ndarray:
    """Label weights of ridge regression: ``alpha(x) = X (X^T X + lam I)^-1 x`` (Rosenfeld et al. 2020).

    ``x_test`` of shape (d,) gives (n,); of shape (m, d) gives (m, n), so that the
    regression output is ``alpha @ y``. ``lam = 0`` needs ``X`` of full column rank.
    """
    lam = _check_lam(lam)
    X = _array(X_train, "X_train")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise PoisonlabError(f"X_train must be a non-empty 2-D (n, d) matrix, got shape {X.shape}")
    x = _array(x_test, "x_test")
    single = x.ndim == 1
    x2 = x[None, :] if single else x
    if x2.ndim != 2 or x2.shape[1] != X.shape[1]:
        raise PoisonlabError(f"x_test must have shape ({X.shape[1]},) or (m, {X.shape[1]}) to match X_train, "
                             f"got {x.shape}")
    d = X.shape[1]
    if lam == 0 and np.linalg.matrix_rank(X) < d:
        raise PoisonlabError(f"X_train^T X_train is singular (rank {np.linalg.matrix_rank(X)} < {d} features); "
                             "use lam > 0")
    gram = X.T @ X + lam * np.eye(d)
    alpha = (X @ np.linalg.solve(gram, x2.T)).T
    return alpha[0] if single else alpha


#: :func:`_min_log_bound` gives up only once its convex lower bound is this far above the target
#: (rounding in the sums cannot then hide a minimum below it)
_GIVE_UP_MARGIN = 1e-7


def _certified_at(alpha: np.ndarray, y: np.ndarray, q: float, label: int, r: int) -> bool:
    """Whether the failure bound of ``label`` after ``r`` flips is below 1/2 (validated inputs)."""
    if q == 0:
        margin = _deterministic_margin(alpha, y, label, r)
        return margin > 0 if label == 1 else margin >= 0
    beta, theta, pi = _setup(alpha, y, q, label)
    target = math.log(0.5)
    return _min_log_bound(beta, theta, pi, r, stop_below=target, give_up_above=target + _GIVE_UP_MARGIN) < target


def certified_flips(alpha: object, y: object, q: float, max_r: int | None = None) -> int:
    """Largest number ``r`` of adversarially flipped training labels under which the smoothed
    prediction provably stays the same (at most ``max_r`` when given; at most ``len(y)``).

    Returns ``-1`` when the bound cannot certify the prediction even without flips (the
    smoothed classifier abstains), so that ``radius >= 0`` means "certified".
    """
    a, yy = _check_alpha_y(alpha, y)
    q = _check_q(q)
    n = len(a)
    cap = n if max_r is None else max_r
    if isinstance(cap, bool) or not isinstance(cap, numbers.Integral) or cap < 0:
        raise PoisonlabError(f"max_r must be an integer >= 0, got {shown(max_r)}")
    cap = min(int(cap), n)
    prob, label = smoothed_prediction(a, yy, q)
    if not prob > 0.5:
        return -1
    return _largest_certified(a, yy, q, label, cap)


def _largest_certified(a: np.ndarray, yy: np.ndarray, q: float, label: int, cap: int) -> int:
    """The largest ``r <= cap`` at which ``label`` is certified, given that it is certified at 0."""
    sign = 1.0 if label == 1 else -1.0
    harmful = int(np.count_nonzero(sign * a * (2.0 * yy - 1.0) > 0))  # flips that can hurt; others only help
    if harmful <= cap and _certified_at(a, yy, q, label, harmful):
        return cap
    lo, hi = 0, min(cap, harmful)  # certified at lo; look for the largest certified r <= hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _certified_at(a, yy, q, label, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def certify(alpha: object, y: object, q: float, r: int) -> tuple[int, bool]:
    """``(class, certified)``: the smoothed class and whether it provably stays the same for
    every choice of ``r`` flipped training labels (Rosenfeld et al. 2020).

    One bound minimisation (:func:`certified_flips` searches over ``r``): ``certified`` is
    ``certified_flips(alpha, y, q, max_r=r) >= r``. The class is the side of 1/2 on which the
    expected score lies, as :func:`smoothed_prediction` picks it (the two can differ only where
    both failure bounds round to exactly 1, and such a prediction is never certified).
    """
    a, yy = _check_alpha_y(alpha, y)
    q = _check_q(q)
    r = _check_r(r)
    label = _expected_label(a, yy, q)
    return label, _certified_at(a, yy, q, label, r)


def certified_radius(alpha: object, y: object, q: float, max_r: int | None = None) -> tuple[int, int]:
    """``(class, radius)``: the smoothed class and :func:`certified_flips`'s radius (``-1``: not
    certified even without flips), without its two extra bound minimisations for the class."""
    a, yy = _check_alpha_y(alpha, y)
    q = _check_q(q)
    cap = min(len(a) if max_r is None else _check_r(max_r, "max_r"), len(a))
    label = _expected_label(a, yy, q)
    if not _certified_at(a, yy, q, label, 0):
        return label, -1
    return label, _largest_certified(a, yy, q, label, cap)


class SmoothedRidge:
    """Ridge regression on fixed features, smoothed over label noise ``q`` (Rosenfeld et al.,
    ICML 2020), fitted once and queried cheaply on many rows.

    With the design matrix ``X`` (n x d; a column of ones appended when ``intercept``),
    ``G = X^T X + lam I`` and ``alpha(x) = X G^-1 x`` (:func:`ridge_alpha`), the expected score
    under the label noise is ``E[alpha(x) . y~] = x . w`` with ``w = G^-1 X^T (q + (1 - 2q) y)``:
    a d-dimensional product per row, so :meth:`predict` never forms an n x m alpha matrix. Its
    class is the side of 1/2 of that score, as :func:`smoothed_prediction` and :func:`certify`
    pick it. :meth:`certify` and :meth:`radii` form ``alpha`` only for the rows they are given,
    ``chunk`` rows at a time, and bound each row as :func:`certify` / :func:`certified_radius` do.

    >>> m = SmoothedRidge(q=0.1, lam=1.0).fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    >>> m.predict(np.array([[0.0], [3.0]])).tolist()
    [0, 1]
    """

    def __init__(self, q: float, lam: float, intercept: bool = True, chunk: int = 256) -> None:
        self.q = _check_q(q)
        self.lam = _check_lam(lam)
        self.intercept = bool(intercept)
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise PoisonlabError(f"chunk must be an integer >= 1, got {shown(chunk)}")
        self.chunk = int(chunk)
        self.X_: np.ndarray | None = None
        self.y_: np.ndarray | None = None
        self.gram_: np.ndarray | None = None
        self.weights_: np.ndarray | None = None

    def design(self, X: object, name: str = "X") -> np.ndarray:
        """``X`` flattened to (m, features) float64, with the intercept column when set."""
        arr = _array(X, name)
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise PoisonlabError(f"{name} must hold at least one row of features, got shape {arr.shape}")
        arr = arr.reshape(len(arr), -1)
        if self.intercept:
            arr = np.hstack([arr, np.ones((len(arr), 1))])
        if self.X_ is not None and arr.shape[1] != self.X_.shape[1]:
            raise PoisonlabError(f"{name} has {arr.shape[1]} columns but the model was fitted on {self.X_.shape[1]}")
        return arr

    def fit(self, X: object, y: object) -> SmoothedRidge:
        """Store the training rows and labels (0/1) and solve for the expected-score weights."""
        self.X_ = None
        D = self.design(X, "X_train")
        yy = _check_labels(y, len(D), "y_train")
        d = D.shape[1]
        if self.lam == 0 and np.linalg.matrix_rank(D) < d:
            raise PoisonlabError(f"X_train^T X_train is singular (rank {np.linalg.matrix_rank(D)} < {d} features); "
                                 "use lam > 0")
        self.gram_ = D.T @ D + self.lam * np.eye(d)
        self.weights_ = np.linalg.solve(self.gram_, D.T @ (self.q + (1.0 - 2.0 * self.q) * yy))
        self.X_, self.y_ = D, yy
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.X_ is None or self.y_ is None or self.gram_ is None or self.weights_ is None:
            raise PoisonlabError("SmoothedRidge is not fitted; call fit(X, y) first")
        return self.X_, self.y_, self.gram_, self.weights_

    def expected_scores(self, X: object) -> np.ndarray:
        """``E[alpha(x) . y~]`` of every row: the regression output averaged over the label noise."""
        return self.design(X) @ self._fitted()[3]

    def predict(self, X: object) -> np.ndarray:
        """The smoothed class (0/1, int64) of every row."""
        return (self.expected_scores(X) > 0.5).astype(np.int64)

    def alphas(self, X: object) -> Iterator[np.ndarray]:
        """``alpha(x)`` of the rows of ``X``, as (rows, n) blocks of at most ``chunk`` rows."""
        D = self.design(X)
        train, _, gram, _ = self._fitted()
        for start in range(0, len(D), self.chunk):
            yield (train @ np.linalg.solve(gram, D[start:start + self.chunk].T)).T

    def certify(self, X: object, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, certified)`` of every row at radius ``r`` (:func:`certify`)."""
        r = _check_r(r)
        y = self._fitted()[1]
        labels, ok = [], []
        for block in self.alphas(X):
            for a in block:
                label = _expected_label(a, y, self.q)
                labels.append(label)
                ok.append(_certified_at(a, y, self.q, label, r))
        return np.asarray(labels, dtype=np.int64), np.asarray(ok, dtype=bool)

    def radii(self, X: object, max_r: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, radii)`` of every row (:func:`certified_radius`; ``-1``: not certified)."""
        y = self._fitted()[1]
        cap = min(len(y) if max_r is None else _check_r(max_r, "max_r"), len(y))
        labels, radius = [], []
        for block in self.alphas(X):
            for a in block:
                label = _expected_label(a, y, self.q)
                labels.append(label)
                radius.append(_largest_certified(a, y, self.q, label, cap)
                              if _certified_at(a, y, self.q, label, 0) else -1)
        return np.asarray(labels, dtype=np.int64), np.asarray(radius, dtype=np.int64)


def curve_from_radii(correct: object, radii: object, max_r: int) -> list[tuple[int, float]]:
    """``[(r, certified accuracy)]`` for ``r = 0..max_r`` from per-row correctness and radii:
    the share of rows that are correct and certified for at least ``r`` flips."""
    c = np.asarray(correct, dtype=bool)
    rad = np.asarray(radii, dtype=np.int64)
    if c.shape != rad.shape or c.ndim != 1 or len(c) == 0:
        raise PoisonlabError(f"correct and radii must be non-empty 1-D arrays of one length, got {c.shape} and {rad.shape}")
    max_r = _check_r(max_r, "max_r")
    return [(r, float(np.mean(c & (rad >= r)))) for r in range(max_r + 1)]


def certified_accuracy_curve(X_train: object, y_train: object, X_test: object, y_test: object, q: float,
                             lam: float, max_r: int) -> list[tuple[int, float]]:
    """``[(r, certified accuracy)]`` for ``r = 0..max_r``: the share of test points whose smoothed
    prediction is correct *and* certified for at least ``r`` flipped training labels
    (non-increasing in ``r``; abstentions count as errors)."""
    X = _array(X_train, "X_train")
    if X.ndim != 2 or X.shape[0] == 0:
        raise PoisonlabError(f"X_train must be a non-empty 2-D (n, d) matrix, got shape {X.shape}")
    yt = _check_labels(y_train, X.shape[0], "y_train")
    Xs = _array(X_test, "X_test")
    if Xs.ndim != 2 or Xs.shape[1] != X.shape[1] or Xs.shape[0] == 0:
        raise PoisonlabError(f"X_test must be a non-empty 2-D (m, {X.shape[1]}) matrix, got shape {Xs.shape}")
    ys = _check_labels(y_test, Xs.shape[0], "y_test")
    q = _check_q(q)
    if isinstance(max_r, bool) or not isinstance(max_r, numbers.Integral) or max_r < 0:
        raise PoisonlabError(f"max_r must be an integer >= 0, got {shown(max_r)}")
    alphas = ridge_alpha(X, Xs, lam)
    radius = np.empty(len(ys), dtype=np.int64)
    correct = np.empty(len(ys), dtype=bool)
    for i, a in enumerate(alphas):
        _, label = smoothed_prediction(a, yt, q)
        correct[i] = label == ys[i]
        radius[i] = certified_flips(a, yt, q, max_r=int(max_r))
    return [(r, float(np.mean(correct & (radius >= r)))) for r in range(int(max_r) + 1)]
