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

**Bound (as in the paper, a Chernoff bound; this module's certificate is sound but may be
looser than the paper's).** ``p`` is a sum over 2^n label vectors, so it is bounded instead.
For the failure event of class c, written ``beta . y~ <= theta`` with ``beta = alpha,
theta = 1/2`` for c = 1 and ``beta = -alpha, theta = -1/2`` for c = 0 (``S >= 1/2``
contains the failure ``S > 1/2``), for every ``t >= 0``::

    P(beta . y~ <= theta) <= B(t) = exp(t theta) * prod_i [(1 - pi_i) + pi_i exp(-t beta_i)]

with ``pi_i = P(y~_i = 1)`` (``1 - q`` if ``y_i = 1``, else ``q``): the exact moment
generating function of each independent Bernoulli term. ``log B`` is convex in ``t`` and is
minimised numerically (bracketing by doubling, then golden-section search).

**Certificate.** An adversary flips up to ``r`` training labels *before* the noise; flipping
label i swaps ``pi_i`` and ``1 - pi_i``, which multiplies ``B(t)`` by a ratio ``rho_i(t)``. At a
fixed ``t`` the worst case multiplies by the ``r`` largest ratios above 1, and the class is
certified at radius ``r`` when ``min_t max_{|F| <= r} B_F(t) < 1/2`` (one ``t`` for every flip
set; that only loosens the bound, since ``min_t max_F >= max_F min_t``). Then every label
vector within ``r`` flips keeps ``P(correct side) > 1/2``, so the smoothed prediction is
unchanged. The paper turns its bound on ``p`` into a radius with its own theorem for
discrete label noise; this module instead applies the Chernoff step directly to every label
vector within ``r`` flips, which is simpler to check by hand and never certifies more than is
true (the tests compare it with exact enumeration), but may certify less.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..errors import PoisonlabError

__all__ = ["certified_accuracy_curve", "certified_flips", "failure_bound", "ridge_alpha", "smoothed_prediction"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _array(a: object, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise PoisonlabError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise PoisonlabError(f"{name} has non-finite values")
    return arr


def _check_q(q: object) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= float(q) < 0.5:
        raise PoisonlabError(f"q (label-flip probability of the smoothing) must be in [0, 0.5), got {q!r}")
    return float(q)


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(float(lam)) or float(lam) < 0:
        raise PoisonlabError(f"lam (ridge penalty) must be a finite number >= 0, got {lam!r}")
    return float(lam)


def _check_labels(y: object, n: int | None, name: str) -> np.ndarray:
    arr = _array(y, name)
    if arr.ndim != 1:
        raise PoisonlabError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise PoisonlabError(f"{name} has {len(arr)} entries but {n} are needed")
    if not np.all((arr == 0) | (arr == 1)):
        raise PoisonlabError(f"{name} must hold binary labels 0/1, got values {np.unique(arr)[:5].tolist()}")
    return arr


def _check_alpha_y(alpha: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    a = _array(alpha, "alpha")
    if a.ndim != 1 or len(a) == 0:
        raise PoisonlabError(f"alpha must be a non-empty 1-D vector (one weight per training row), got shape {a.shape}")
    return a, _check_labels(y, len(a), "y")


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


def _setup(alpha: np.ndarray, y: np.ndarray, q: float, label: int) -> tuple[np.ndarray, float, np.ndarray]:
    """``beta``, ``theta`` and ``pi`` of the failure event of ``label``."""
    sign = 1.0 if label == 1 else -1.0
    pi = np.where(y == 1, 1.0 - q, q)
    return sign * alpha, sign * 0.5, pi


def _log_mgf(beta: np.ndarray, pi: np.ndarray, t: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log1p(-pi), np.log(pi) - t * beta)


def _worst_log_bound(beta: np.ndarray, theta: float, pi: np.ndarray, r: int, t: float) -> float:
    """``log max_{|F| <= r} B_F(t)``: the bound with the ``r`` most harmful flips."""
    base = _log_mgf(beta, pi, t)
    total = t * theta + float(base.sum())
    if r > 0:
        ratios = _log_mgf(beta, 1.0 - pi, t) - base
        ratios = ratios[ratios > 0]
        if len(ratios) > r:
            ratios = np.partition(ratios, len(ratios) - r)[len(ratios) - r:]
        total += float(ratios.sum())
    return total


def _min_log_bound(beta: np.ndarray, theta: float, pi: np.ndarray, r: int, stop_below: float = -math.inf) -> float:
    """``min_{t >= 0}`` of the worst-case log bound (convex in ``t``): doubling, then golden section.

    Returns early, with a value below ``stop_below``, as soon as one is found (enough to certify).
    """
    g = lambda t: _worst_log_bound(beta, theta, pi, r, t)
    scale = float(np.abs(beta).max())
    t = 1.0 / scale if scale > 0 else 1.0
    gt = g(t)
    best = min(0.0, gt)  # g(0) = 0: the bound is at most 1
    for _ in range(200):  # convex: once g(2t) >= g(t), the minimum lies in [0, 2t]
        if best < stop_below:
            return best
        nxt = g(2.0 * t)
        if not nxt < gt:
            break
        t, gt = 2.0 * t, nxt
        best = min(best, nxt)
    lo, hi = 0.0, 2.0 * t
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    ga, gb = g(a), g(b)
    for _ in range(80):  # the bracket shrinks to 0.618^80 ~ 2e-17 of its width
        if min(ga, gb) < stop_below:
            break
        if ga <= gb:
            hi, b, gb = b, a, ga
            a = hi - _GOLDEN * (hi - lo)
            ga = g(a)
        else:
            lo, a, ga = a, b, gb
            b = lo + _GOLDEN * (hi - lo)
            gb = g(b)
    return min(best, ga, gb)


def _certified_at(alpha: np.ndarray, y: np.ndarray, q: float, label: int, r: int) -> bool:
    """Whether the failure bound of ``label`` after ``r`` flips is below 1/2 (validated inputs)."""
    if q == 0:
        margin = _deterministic_margin(alpha, y, label, r)
        return margin > 0 if label == 1 else margin >= 0
    beta, theta, pi = _setup(alpha, y, q, label)
    return _min_log_bound(beta, theta, pi, r, stop_below=math.log(0.5)) < math.log(0.5)


def _deterministic_margin(alpha: np.ndarray, y: np.ndarray, label: int, r: int) -> float:
    """q = 0: the worst-case signed margin of the score after ``r`` flips (> 0 means certified)."""
    sign = 1.0 if label == 1 else -1.0
    margin = sign * (float(alpha @ y) - 0.5)
    harm = sign * alpha * (2.0 * y - 1.0)  # how much flipping row i lowers the margin
    harm = np.sort(harm[harm > 0])[::-1]
    return margin - float(harm[:r].sum())


def failure_bound(alpha: object, y: object, q: float, label: int, r: int = 0) -> float:
    """Chernoff upper bound on the worst probability, over all label vectors within ``r`` flips
    of ``y``, that the noisy-label base classifier does *not* output ``label``.

    Values are in [0, 1]; ``label`` is certified at radius ``r`` iff the bound is < 1/2.
    With ``q = 0`` there is no noise and the bound is 0 or 1 (the exact answer).
    """
    a, yy = _check_alpha_y(alpha, y)
    q = _check_q(q)
    if label not in (0, 1) or isinstance(label, bool):
        raise PoisonlabError(f"label must be 0 or 1, got {label!r}")
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
        raise PoisonlabError(f"r (number of flipped labels) must be an integer >= 0, got {r!r}")
    if q == 0:
        margin = _deterministic_margin(a, yy, int(label), int(r))
        # class 1 fails when score <= 1/2; class 0 fails when score > 1/2
        return 0.0 if (margin > 0 if label == 1 else margin >= 0) else 1.0
    beta, theta, pi = _setup(a, yy, q, int(label))
    return float(min(1.0, math.exp(_min_log_bound(beta, theta, pi, int(r)))))


def smoothed_prediction(alpha: object, y: object, q: float) -> tuple[float, int]:
    """``(probability, class)`` of the label-smoothed classifier (Rosenfeld et al. 2020).

    ``class``: the one whose failure bound is smaller, i.e. the side of 1/2 on which the
    expected score ``E[alpha . y~]`` lies (class 0 on a tie). ``probability``: a lower bound
    (1 minus the Chernoff bound) on the probability that the noisy-label classifier outputs
    that class; the prediction is certain when it exceeds 1/2.
    """
    a, yy = _check_alpha_y(alpha, y)
    q = _check_q(q)
    b1, b0 = failure_bound(a, yy, q, 1), failure_bound(a, yy, q, 0)
    label = 1 if b1 < b0 else 0
    return 1.0 - min(b0, b1), label


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
        raise PoisonlabError(f"max_r must be an integer >= 0, got {max_r!r}")
    cap = min(int(cap), n)
    prob, label = smoothed_prediction(a, yy, q)
    if not prob > 0.5:
        return -1
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
        raise PoisonlabError(f"max_r must be an integer >= 0, got {max_r!r}")
    alphas = ridge_alpha(X, Xs, lam)
    radius = np.empty(len(ys), dtype=np.int64)
    correct = np.empty(len(ys), dtype=bool)
    for i, a in enumerate(alphas):
        _, label = smoothed_prediction(a, yt, q)
        correct[i] = label == ys[i]
        radius[i] = certified_flips(a, yt, q, max_r=int(max_r))
    return [(r, float(np.mean(correct & (radius >= r)))) for r in range(int(max_r) + 1)]
