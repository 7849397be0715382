"""Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636, Algorithm 1).

For each class c (by the *training* labels, so poison relabelled to the target class is
grouped with it), centre the class's representations ``R_c - mean(R_c)``, take the top
right singular vector ``v`` of the centred matrix, and score every row by its squared
projection ``((r - mean) . v) ** 2``. Poisoned rows leave a strong trace along ``v`` and get
the largest scores; the ``round(removal_factor * epsilon * n_c)`` highest-scoring rows of
each class are removed (``epsilon``: the assumed poison rate, ``removal_factor = 1.5`` in
the paper). Rounding is half up.

**Validation rule** (``rule="validation"``, an extension for defenders who hold a small
clean validation split, as Fine-Pruning assumes): the paper's budget ``1.5 * epsilon`` needs
the poison rate, and its score, measured from the class mean, cannot tell poisons from clean
rows once the poisons are as many as the clean rows (the mean then lies between the two
groups). Here each class's representations are centred at the mean of the class's *clean
validation* rows instead, the top singular direction is taken of the training rows so
centred, and a row is removed when its squared projection exceeds the threshold that
``false_removal_rate`` of the class's validation rows exceed (the ``(m - k)``-th smallest of
the ``m`` validation scores, ``k = floor(false_removal_rate * m)``). No poison rate is
assumed, and every threshold is read off validation data. A class with fewer than
``MIN_VALIDATION_ROWS`` validation rows is left alone and noted in ``details``.

Determinism: the SVD (or, for a tall class, the Gram matrix's eigendecomposition) is computed
with LAPACK on float64; the sign of ``v`` is fixed so that
its largest-magnitude entry is positive (the scores do not depend on it); rows with equal
scores are ranked by row index. A class with fewer than 2 rows, or whose rows are all equal
(no direction to project on), has score 0 and nothing removed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import PoisonlabError, did_you_mean, shown
from .filtering import FilterResult, check_representations

__all__ = ["MIN_VALIDATION_ROWS", "RULES", "spectral_signatures", "top_singular_direction", "validation_threshold"]

RULES = ("budget", "validation")
MIN_VALIDATION_ROWS = 10


def top_singular_direction(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The top right singular vector of ``centred`` (sign: largest-magnitude entry positive)
    and its singular value.

    For a tall matrix (rows > 2 x columns, e.g. 6,600 MNIST rows of 512 activations) they come
    from the symmetric eigendecomposition of the D x D Gram matrix ``centred.T @ centred``
    (its top eigenvector and the square root of its top eigenvalue), which is cheaper than the
    SVD of the whole class and agreed with it to ~1e-15 relative on MNIST activations;
    otherwise from the SVD."""
    n, d = centred.shape
    if n > 2 * d:
        w, vecs = np.linalg.eigh(centred.T @ centred)
        v, top = vecs[:, -1], float(np.sqrt(max(w[-1], 0.0)))
        if v[np.argmax(np.abs(v))] < 0:
            v = -v
        return v, top
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    if v[np.argmax(np.abs(v))] < 0:
        v = -v
    return v, float(s[0])


def _removal_count(removal_factor: float, epsilon: float, n: int) -> int:
    """``round(removal_factor * epsilon * n)``, half up, at most ``n`` (tolerant to float error)."""
    return min(n, math.floor(removal_factor * epsilon * n + 0.5 + 1e-9))


def validation_threshold(val_scores: np.ndarray, false_removal_rate: float) -> float:
    """The score that at most ``floor(false_removal_rate * m)`` of the ``m`` validation scores
    exceed: the ``(m - k)``-th smallest (1-based).

    >>> validation_threshold(np.array([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0, 8.0, 6.0, 0.0]), 0.2)
    7.0
    """
    s = np.sort(np.asarray(val_scores, dtype=np.float64))
    k = math.floor(false_removal_rate * len(s) + 1e-9)
    return float(s[len(s) - 1 - k])


def _check_rule(rule: str, val_reprs: np.ndarray | None, val_labels: np.ndarray | None,
                false_removal_rate: float) -> None:
    if rule not in RULES:
        raise PoisonlabError(f"unknown rule {shown(rule)}{did_you_mean(str(rule), RULES)}; choose one of {', '.join(RULES)}")
    if rule == "validation":
        if val_reprs is None or val_labels is None:
            raise PoisonlabError("rule 'validation' needs the clean validation rows' representations and labels "
                                 "(val_reprs, val_labels); set data.val_fraction > 0")
        if isinstance(false_removal_rate, bool) or not isinstance(false_removal_rate, (int, float, np.number)) \
                or not 0 <= float(false_removal_rate) < 1:
            raise PoisonlabError(f"false_removal_rate must be in [0, 1), got {shown(false_removal_rate)}")


def spectral_signatures(reprs: np.ndarray, labels: np.ndarray, epsilon: float = 0.1,
                        removal_factor: float = 1.5, rule: str = "budget", val_reprs: np.ndarray | None = None,
                        val_labels: np.ndarray | None = None, false_removal_rate: float = 0.05) -> FilterResult:
    """Score rows by their squared projection on their class's top singular direction and
    remove the top ``round(removal_factor * epsilon * n_c)`` of each class (Tran et al. 2018),
    or, with ``rule="validation"``, the rows scoring above the clean validation threshold.

    ``details``: ``epsilon``, ``removal_factor`` and ``classes``, mapping each class to
    ``n`` (rows), ``removed`` (rows removed), ``singular_value`` (top singular value of the
    centred class), ``threshold`` (smallest removed score, NaN when none; with the validation rule, the
    validation threshold) and ``direction``
    (the singular vector, ``None`` when skipped); with the validation rule also ``n_val`` and
    ``note`` (why a class was left alone, else ``""``).
    """
    _check_rule(rule, val_reprs, val_labels, false_removal_rate)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.number)) \
            or not 0 < float(epsilon) < 1:
        raise PoisonlabError(f"epsilon (assumed poison rate) must be in (0, 1), got {shown(epsilon)}")
    if isinstance(removal_factor, bool) or not isinstance(removal_factor, (int, float, np.number)) \
            or not math.isfinite(float(removal_factor)) or float(removal_factor) <= 0:
        raise PoisonlabError(f"removal_factor must be a positive number (the paper uses 1.5), got {shown(removal_factor)}")
    x, y = check_representations(reprs, labels)
    xv = yv = None
    if rule == "validation":
        xv, yv = check_representations(val_reprs, val_labels)
        if xv.shape[1] != x.shape[1]:
            raise PoisonlabError(f"val_reprs have {xv.shape[1]} features but reprs have {x.shape[1]}; "
                                 f"take both from the same layer")
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
        if xv is not None:
            info["n_val"] = int((yv == c).sum())
            info["note"] = ""
            if info["n_val"] < MIN_VALIDATION_ROWS:
                info["note"] = f"{info['n_val']} validation rows (< {MIN_VALIDATION_ROWS}): class left alone"
                continue
            centre = xv[yv == c].mean(0)
        else:
            centre = x[idx].mean(0)
        centred = x[idx] - centre
        v, s = top_singular_direction(centred)
        info["singular_value"] = s
        if s <= 0:  # every row equal: no signature
            continue
        info["direction"] = v
        class_scores = (centred @ v) ** 2
        scores[idx] = class_scores
        if xv is not None:
            val_scores = ((xv[yv == c] - centre) @ v) ** 2
            info["threshold"] = validation_threshold(val_scores, float(false_removal_rate))
            flagged = class_scores > info["threshold"]
            remove[idx[flagged]] = True
            info["removed"] = int(flagged.sum())
            continue
        k = _removal_count(factor, eps, len(idx))
        if k == 0:
            continue
        order = np.lexsort((idx, -class_scores))  # highest score first, ties by row index
        top = order[:k]
        remove[idx[top]] = True
        info["removed"] = k
        info["threshold"] = float(class_scores[top[-1]])
    return FilterResult(scores, remove, {"rule": rule, "epsilon": eps, "removal_factor": factor,
                                         "false_removal_rate": float(false_removal_rate), "classes": classes})
