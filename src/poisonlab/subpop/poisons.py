"""Label-flipping poisons for a subpopulation (Jagielski et al., CCS 2021, Sec. 4.2).

The attacker copies rows of the subpopulation from its own data (drawn with
replacement) and gives them all one label: the label its own model finds least likely
for that subpopulation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError


def poison_count(alpha: float, n: int) -> int:
    """Number of poisons: ``floor(alpha * n + 0.5)`` (halves round up, unlike Python's ``round``).

    >>> poison_count(0.5, 5), round(0.5 * 5)
    (3, 2)
    """
    return int(np.floor(alpha * n + 0.5))


def label_flip_poisons(x_sub_attacker: Any, alpha: float, label: int,
                       rng: np.random.Generator | int, num_classes: int | None = None) -> tuple[Any, Any, np.ndarray]:
    """Poisons for one subpopulation: ``(x_poison, y_poison, rows)`` (Sec. 4.2).

    ``x_sub_attacker`` holds the n attacker rows of the subpopulation: a torch tensor
    (images or feature rows), a numpy array (features, or an object array of texts) or a
    list (made a numpy array). ``poison_count(alpha, n)`` row indices are drawn with
    replacement by ``rng`` (a ``np.random.Generator`` or an int seed); ``rows`` holds them,
    ``x_poison = x_sub_attacker[rows]`` and every ``y_poison`` is ``label`` (int64, a tensor
    when x is a tensor). alpha small enough to round to 0 poisons gives empty outputs.

    >>> x, y, rows = label_flip_poisons(np.arange(5.0)[:, None], 0.5, 1, rng=0)
    >>> len(x), y.tolist(), bool(((rows >= 0) & (rows < 5)).all())
    (3, [1, 1, 1], True)
    """
    if not (float(alpha) > 0):  # also catches NaN
        raise PoisonlabError(f"alpha must be > 0 (poisons per attacker row of the subpopulation), got {alpha}")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise PoisonlabError(f"label must be an integer class index, got {label!r}")
    if num_classes is not None and num_classes < 1:
        raise PoisonlabError(f"num_classes must be >= 1, got {num_classes}")
    if label < 0 or (num_classes is not None and label >= num_classes):
        top = f"{num_classes - 1}" if num_classes is not None else "num_classes - 1"
        raise PoisonlabError(f"label {label} is out of range; use a class index in 0..{top}")
    x = x_sub_attacker if isinstance(x_sub_attacker, (torch.Tensor, np.ndarray)) else np.asarray(x_sub_attacker)
    n = len(x)
    if n == 0:
        raise PoisonlabError("the subpopulation has no attacker rows to copy; pick one with attacker_count > 0")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    rows = gen.integers(0, n, size=poison_count(alpha, n)).astype(np.int64)
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(rows)], torch.full((len(rows),), int(label), dtype=torch.int64), rows
    return x[rows], np.full(len(rows), int(label), dtype=np.int64), rows


def least_likely_label(probs: np.ndarray | torch.Tensor) -> int:
    """The class with the lowest mean predicted probability over the subpopulation's attacker
    rows, from the attacker's own model (Sec. 4.2); ties go to the smaller class index.

    >>> least_likely_label(np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]]))
    1
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise PoisonlabError(f"probs must be a non-empty (rows, classes) array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise PoisonlabError("probs contains NaN or infinite values")
    return int(p.mean(axis=0).argmin())
