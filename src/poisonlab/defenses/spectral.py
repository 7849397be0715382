"""Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636, Algorithm 1).

For each class c (by the *training* labels, so poison relabelled to the target class is
grouped with it), centre the class's representations ``R_c - mean(R_c)``, take the top
right singular vector ``v`` of the centred matrix, and score every row by its squared
projection ``((r - mean) . v) ** 2``. Poisoned rows leave a strong trace along ``v`` and get
the largest scores; the ``round(removal_factor * epsilon * n_c)`` highest-scoring rows of
each class are removed (``epsilon``: the assumed poison rate, ``removal_factor = 1.5`` in
the paper). Rounding is half up.

Determinism: the SVD is computed with LAPACK on float64; the sign of ``v`` is fixed so that
its largest-magnitude entry is positive (the scores do not depend on it); rows with equal
scores are ranked by row index. A class with fewer than 2 rows, or whose rows are all equal
(no direction to project on), has score 0 and nothing removed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import PoisonlabError
from .filtering import FilterResult, check_representations

__all__ = ["spectral_signatures", "top_singular_direction"]


def top_singular_direction(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The top right singular vector of ``centred`` (sign: largest-magnitude entry positive)
    and its singular value."""
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    if v[np.argmax(np.abs(v))] < 0:
        v = -v
    return v, float(s[0])


def _removal_count(removal_factor: float, epsilon: float, n: int) -> int:
    """``round(removal_factor * epsilon * n)``, half up, at most ``n`` (tolerant to float error)."""
    return min(n, math.floor(removal_factor * epsilon * n + 0.5 + 1e-9))


def spectral_signatures(reprs: np.ndarray, labels: np.ndarray, epsilon: float,
                        removal_factor: float = 1.5) -> FilterResult:
    """Score rows by their squared projection on their class's top singular direction and
    remove the top ``round(removal_factor * epsilon * n_c)`` of each class (Tran et al. 2018).

    ``details``: ``epsilon``, ``removal_factor`` and ``classes``, mapping each class to
    ``n`` (rows), ``removed`` (rows removed), ``singular_value`` (top singular value of the
    centred class), ``threshold`` (smallest removed score, NaN when none) and ``direction``
    (the singular vector, ``None`` when skipped).
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.number)) \
            or not 0 < float(epsilon) < 1:
        raise PoisonlabError(f"epsilon (assumed poison rate) must be in (0, 1), got {epsilon!r}")
    if isinstance(removal_factor, bool) or not isinstance(removal_factor, (int, float, np.number)) \
            or not math.isfinite(float(removal_factor)) or float(removal_factor) <= 0:
        raise PoisonlabError(f"removal_factor must be a positive number (the paper uses 1.5), got {removal_factor!r}")
    x, y = check_representations(reprs, labels)
    eps, factor = float(epsilon), float(removal_factor)
    scores = np.zeros(len(y))
    remove = np.zeros(len(y), dtype=bool)
    classes: dict[int, dict[str, Any]] = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        info: dict[str, Any] = {"n": len(idx), "removed": 0, "singular_value": math.nan,
                                "threshold": math.nan, "direction": None}
        classes[int(c)] = info
        if len(idx) < 2:
            continue
        centred = x[idx] - x[idx].mean(0)
        v, s = top_singular_direction(centred)
        info["singular_value"] = s
        if s <= 0:  # every row equal: no signature
            continue
        info["direction"] = v
        class_scores = (centred @ v) ** 2
        scores[idx] = class_scores
        k = _removal_count(factor, eps, len(idx))
        if k == 0:
            continue
        order = np.lexsort((idx, -class_scores))  # highest score first, ties by row index
        top = order[:k]
        remove[idx[top]] = True
        info["removed"] = k
        info["threshold"] = float(class_scores[top[-1]])
    return FilterResult(scores, remove, {"epsilon": eps, "removal_factor": factor, "classes": classes})
