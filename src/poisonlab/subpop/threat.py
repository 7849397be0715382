"""The attacker/victim split of the threat model (Jagielski et al., CCS 2021, Sec. 3).

The attacker holds data drawn from the same distribution as the victim's training set
but disjoint from it; it uses that data to find subpopulations and to build poisons.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PoisonlabError

# Second word of the seed sequence, so this split's stream differs from other users of `seed`.
_SPLIT_STREAM = 0x53504C54  # "SPLT"


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def attacker_split(n_rows: int, attacker_fraction: float, seed: int,
                   y: np.ndarray | torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n_rows)`` into sorted, disjoint ``(victim_idx, attacker_idx)`` (Sec. 3).

    The attacker gets ``floor(attacker_fraction * n_rows + 0.5)`` rows, drawn with
    ``np.random.default_rng([seed, _SPLIT_STREAM])``. With labels ``y`` the draw is
    stratified: each class c gets ``floor(fraction * n_c)`` attacker rows and the rows still
    owed go, one each, to the classes with the largest remainders (ties: smaller label first),
    so the total matches the unstratified split.

    >>> v, a = attacker_split(10, 0.3, seed=0)
    >>> len(v), len(a), sorted(np.concatenate([v, a]).tolist()) == list(range(10))
    (7, 3, True)
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise PoisonlabError(f"n_rows must be a positive integer, got {n_rows!r}")
    if not 0.0 < float(attacker_fraction) < 1.0:
        raise PoisonlabError(f"attacker_fraction must be in (0, 1), got {attacker_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PoisonlabError(f"seed must be a non-negative integer, got {seed!r}")
    n_rows = int(n_rows)
    rng = np.random.default_rng([int(seed), _SPLIT_STREAM])
    k = _round_half_up(attacker_fraction * n_rows)
    if y is None:
        attacker = rng.permutation(n_rows)[:k]
    else:
        labels = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if labels.shape != (n_rows,):
            raise PoisonlabError(f"y must have shape ({n_rows},) to stratify the split, got {labels.shape}")
        classes, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        quota = attacker_fraction * counts
        take = np.floor(quota).astype(np.int64)
        owed = k - int(take.sum())
        if owed > 0:
            order = np.argsort(-(quota - take), kind="stable")
            take[order[:owed]] += 1
        parts = []
        for c in range(len(classes)):
            rows = np.flatnonzero(inverse == c)
            parts.append(rows[rng.permutation(len(rows))[: take[c]]])
        attacker = np.concatenate(parts)
    attacker = np.sort(attacker).astype(np.int64)
    is_attacker = np.zeros(n_rows, dtype=bool)
    is_attacker[attacker] = True
    victim = np.flatnonzero(~is_attacker).astype(np.int64)
    if len(attacker) == 0 or len(victim) == 0:
        side = "attacker" if len(attacker) == 0 else "victim"
        raise PoisonlabError(
            f"attacker_fraction={attacker_fraction} of {n_rows} rows leaves the {side} part empty; "
            f"use more rows or a fraction nearer 0.5")
    return victim, attacker
