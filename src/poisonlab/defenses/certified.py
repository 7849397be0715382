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
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import PoisonlabError, shown

__all__ = ["SmoothedRidge", "certified_accuracy_curve", "certified_flips", "certified_radius", "certify",
           "curve_from_radii", "failure_bound", "ridge_alpha", "smoothed_prediction"]

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
        raise PoisonlabError(f"q (label-flip probability of the smoothing) must be in [0, 0.5), got {shown(q)}")
    return float(q)


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(float(lam)) or float(lam) < 0:
        raise PoisonlabError(f"lam (ridge penalty) must be a finite number >= 0, got {shown(lam)}")
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


class _Logs:
    """``log(1 - pi)`` and ``log(pi)`` of the noisy labels and of the flipped ones (``pi -> 1 - pi``),
    computed once per bound minimisation instead of once per ``t`` (the same expressions, so
    the same bits as computing them afresh)."""

    def __init__(self, pi: np.ndarray) -> None:
        with np.errstate(divide="ignore"):
            self.keep = (np.log1p(-pi), np.log(pi))
            flipped = 1.0 - pi
            self.flip = (np.log1p(-flipped), np.log(flipped))


def _log_mgf(beta: np.ndarray, pi: np.ndarray | tuple[np.ndarray, np.ndarray], t: float) -> np.ndarray:
    """``log E[exp(-t beta_i y~_i)]`` per row; ``pi`` or its precomputed ``(log(1 - pi), log(pi))``."""
    log1m, logp = pi if isinstance(pi, tuple) else _Logs(pi).keep
    return np.logaddexp(log1m, logp - t * beta)


def _worst_log_bound(beta: np.ndarray, theta: float, pi: np.ndarray | _Logs, r: int, t: float) -> float:
    """``log max_{|F| <= r} B_F(t)``: the bound with the ``r`` most harmful flips."""
    logs = pi if isinstance(pi, _Logs) else _Logs(pi)
    base = _log_mgf(beta, logs.keep, t)
    total = t * theta + float(base.sum())
    if r > 0:
        ratios = _log_mgf(beta, logs.flip, t) - base
        ratios = ratios[ratios > 0]
        if len(ratios) > r:
            ratios = np.partition(ratios, len(ratios) - r)[len(ratios) - r:]
        total += float(ratios.sum())
    return total


#: :func:`_min_log_bound` gives up only once its convex lower bound is this far above the target
#: (rounding in the sums cannot then hide a minimum below it)
_GIVE_UP_MARGIN = 1e-7


def _convex_floor(ps: Sequence[float], vs: Sequence[float]) -> float:
    """A lower bound on ``min g`` over ``[ps[0], ps[-1]]`` for a convex ``g`` with values ``vs`` at
    the increasing points ``ps``: outside a chord, a convex function lies above the chord's line,
    so on each interval ``g`` is above the lines through the neighbouring pairs of points."""
    def line(i: int, x: float) -> float:  # the line through points i and i + 1, at x
        return vs[i] + (vs[i + 1] - vs[i]) / (ps[i + 1] - ps[i]) * (x - ps[i])

    lowest = math.inf
    for i in range(len(ps) - 1):
        lines = [j for j in (i - 1, i + 1) if 0 <= j and j + 1 < len(ps)]
        if not lines or ps[i + 1] <= ps[i]:
            return -math.inf
        xs = [ps[i], ps[i + 1]]
        if len(lines) == 2:  # where the two lines cross, if inside the interval
            (j, k) = lines
            sj = (vs[j + 1] - vs[j]) / (ps[j + 1] - ps[j])
            sk = (vs[k + 1] - vs[k]) / (ps[k + 1] - ps[k])
            if sj != sk:
                x = (vs[k] - sk * ps[k] - vs[j] + sj * ps[j]) / (sj - sk)
                if ps[i] < x < ps[i + 1]:
                    xs.append(x)
        lowest = min(lowest, min(max(line(j, x) for j in lines) for x in xs))
    return lowest


def _min_log_bound(beta: np.ndarray, theta: float, pi: np.ndarray, r: int, stop_below: float = -math.inf,
                   give_up_above: float = math.inf) -> float:
    """``min_{t >= 0}`` of the worst-case log bound (convex in ``t``): doubling, then golden section.

    Returns early, with a value below ``stop_below``, as soon as one is found (enough to certify),
    and, with a finite ``give_up_above``, with a lower bound on the minimum as soon as that
    bound (:func:`_convex_floor` of the golden-section points) is at least ``give_up_above``
    (enough to refuse: no ``t`` can get below it).
    """
    logs = _Logs(pi)
    g = lambda t: _worst_log_bound(beta, theta, logs, r, t)
    scale = float(np.abs(beta).max())
    t = 1.0 / scale if scale > 0 else 1.0
    gt = g(t)
    best = min(0.0, gt)  # g(0) = 0: the bound is at most 1
    g_hi: float | None = None
    for _ in range(200):  # convex: once g(2t) >= g(t), the minimum lies in [0, 2t]
        if best < stop_below:
            return best
        nxt = g(2.0 * t)
        if not nxt < gt:
            g_hi = nxt
            break
        t, gt = 2.0 * t, nxt
        best = min(best, nxt)
    lo, hi = 0.0, 2.0 * t
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    ga, gb = g(a), g(b)
    watch = math.isfinite(give_up_above)
    if watch:
        g_lo = g(0.0)
        g_hi = g(hi) if g_hi is None else g_hi
    for _ in range(80):  # the bracket shrinks to 0.618^80 ~ 2e-17 of its width
        if min(ga, gb) < stop_below:
            break
        if watch:
            floor = _convex_floor((lo, a, b, hi), (g_lo, ga, gb, g_hi))
            if floor >= give_up_above:
                return floor
        if ga <= gb:
            hi, g_hi, b, gb = b, gb, a, ga
            a = hi - _GOLDEN * (hi - lo)
            ga = g(a)
        else:
            lo, g_lo, a, ga = a, ga, b, gb
            b = lo + _GOLDEN * (hi - lo)
            gb = g(b)
    return min(best, ga, gb)


def _certified_at(alpha: np.ndarray, y: np.ndarray, q: float, label: int, r: int) -> bool:
    """Whether the failure bound of ``label`` after ``r`` flips is below 1/2 (validated inputs)."""
    if q == 0:
        margin = _deterministic_margin(alpha, y, label, r)
        return margin > 0 if label == 1 else margin >= 0
    beta, theta, pi = _setup(alpha, y, q, label)
    target = math.log(0.5)
    return _min_log_bound(beta, theta, pi, r, stop_below=target, give_up_above=target + _GIVE_UP_MARGIN) < target


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
        raise PoisonlabError(f"label must be 0 or 1, got {shown(label)}")
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
        raise PoisonlabError(f"r (number of flipped labels) must be an integer >= 0, got {shown(r)}")
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


def _check_r(r: object, name: str = "r") -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
        raise PoisonlabError(f"{name} (number of flipped labels) must be an integer >= 0, got {shown(r)}")
    return int(r)


def _expected_label(a: np.ndarray, yy: np.ndarray, q: float) -> int:
    """The smoothed class: the side of 1/2 of ``E[alpha . y~] = q sum(alpha) + (1 - 2q) alpha . y``."""
    return 1 if q * float(a.sum()) + (1.0 - 2.0 * q) * float(a @ yy) > 0.5 else 0


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
