"""The Chernoff bound behind the certified label-flipping defense (:mod:`poisonlab.defenses.certified`).

After Rosenfeld, Winston, Ravikumar, Kolter, "Certified Robustness to Label-Flipping
Attacks via Randomized Smoothing", ICML 2020, arXiv 2002.03018 (binary case): input checks,
the failure bound of the label-smoothed linear classifier ``score = alpha . y~`` and its
minimisation over ``t``, and the smoothed prediction.

**Bound (as in the paper, a Chernoff bound; the certificate built on it is sound but may be
looser than the paper's).** ``p = P(alpha . y~ > 1/2)`` is a sum over 2^n label vectors, so it
is bounded instead. For the failure event of class c, written ``beta . y~ <= theta`` with
``beta = alpha, theta = 1/2`` for c = 1 and ``beta = -alpha, theta = -1/2`` for c = 0
(``S >= 1/2`` contains the failure ``S > 1/2``), for every ``t >= 0``::

    P(beta . y~ <= theta) <= B(t) = exp(t theta) * prod_i [(1 - pi_i) + pi_i exp(-t beta_i)]

with ``pi_i = P(y~_i = 1)`` (``1 - q`` if ``y_i = 1``, else ``q``): the exact moment
generating function of each independent Bernoulli term. ``log B`` is convex in ``t`` and is
minimised numerically (bracketing by doubling, then golden-section search). Flipping label i
before the noise swaps ``pi_i`` and ``1 - pi_i``; :func:`_worst_log_bound` applies the ``r``
most harmful flips at a fixed ``t``.

**Early stops.** :func:`_min_log_bound` can stop once a ``t`` gives a bound below a target, and
once a lower bound on the convex minimum, read off the golden-section points
(:func:`_convex_floor`), is above another (no ``t`` can do better).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import PoisonlabError, shown

__all__ = ["failure_bound", "smoothed_prediction"]

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


def _check_r(r: object, name: str = "r") -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
        raise PoisonlabError(f"{name} (number of flipped labels) must be an integer >= 0, got {shown(r)}")
    return int(r)


def _expected_label(a: np.ndarray, yy: np.ndarray, q: float) -> int:
    """The smoothed class: the side of 1/2 of ``E[alpha . y~] = q sum(alpha) + (1 - 2q) alpha . y``."""
    return 1 if q * float(a.sum()) + (1.0 - 2.0 * q) * float(a @ yy) > 0.5 else 0

