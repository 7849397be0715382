"""The attacker/victim split of the threat model (Jagielski et al., CCS 2021, Sec. 3).

The attacker holds data drawn from the same distribution as the victim's training set
but disjoint from it; it uses that data to find subpopulations and to build poisons.
Defenses that need clean data of their own (Fine-Pruning, Liu et al. 2018) get a validation
split carved from the victim's rows before any poisoning (:func:`validation_split`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PoisonlabError

# Second word of the seed sequence, so this split's stream differs from other users of `seed`.
_SPLIT_STREAM = 0x53504C54  # "SPLT"
_VAL_STREAM = 0x56414C44  # "VALD": the validation split's own stream


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
    victim, attacker = _draw(n_rows, attacker_fraction, np.random.default_rng([int(seed), _SPLIT_STREAM]), y)
    if len(attacker) == 0 or len(victim) == 0:
        side = "attacker" if len(attacker) == 0 else "victim"
        raise PoisonlabError(
            f"attacker_fraction={attacker_fraction} of {n_rows} rows leaves the {side} part empty; "
            f"use more rows or a fraction nearer 0.5")
    return victim, attacker


def _draw(n_rows: int, fraction: float, rng: np.random.Generator,
          y: np.ndarray | torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(rest, drawn)``: ``floor(fraction * n_rows + 0.5)`` rows drawn by ``rng``,
    stratified by ``y`` when given (see :func:`attacker_split`)."""
    k = _round_half_up(fraction * n_rows)
    if y is None:
        drawn = rng.permutation(n_rows)[:k]
    else:
        labels = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if labels.shape != (n_rows,):
            raise PoisonlabError(f"y must have shape ({n_rows},) to stratify the split, got {labels.shape}")
        classes, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        quota = fraction * counts
        take = np.floor(quota).astype(np.int64)
        owed = k - int(take.sum())
        if owed > 0:
            order = np.argsort(-(quota - take), kind="stable")
            take[order[:owed]] += 1
        parts = []
        for c in range(len(classes)):
            rows = np.flatnonzero(inverse == c)
            parts.append(rows[rng.permutation(len(rows))[: take[c]]])
        drawn = np.concatenate(parts)
    drawn = np.sort(drawn).astype(np.int64)
    is_drawn = np.zeros(n_rows, dtype=bool)
    is_drawn[drawn] = True
    return np.flatnonzero(~is_drawn).astype(np.int64), drawn


def validation_split(n_rows: int, val_fraction: float, seed: int,
                     y: np.ndarray | torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split the victim's ``n_rows`` clean rows into sorted, disjoint ``(train_idx, val_idx)``.

    ``val_idx`` holds ``floor(val_fraction * n_rows + 0.5)`` rows, drawn (stratified by ``y``
    when given, as :func:`attacker_split`) with ``np.random.default_rng([seed, _VAL_STREAM])``;
    ``val_fraction = 0`` gives an empty validation split. The split is made before any poison
    exists, so it holds clean victim rows only; the victim and the clean model train on the rest.

    >>> t, v = validation_split(10, 0.2, seed=0)
    >>> len(t), len(v), sorted(np.concatenate([t, v]).tolist()) == list(range(10))
    (8, 2, True)
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise PoisonlabError(f"n_rows must be a positive integer, got {n_rows!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise PoisonlabError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PoisonlabError(f"seed must be a non-negative integer, got {seed!r}")
    n_rows = int(n_rows)
    if val_fraction == 0:
        return np.arange(n_rows, dtype=np.int64), np.zeros(0, dtype=np.int64)
    train, val = _draw(n_rows, float(val_fraction), np.random.default_rng([int(seed), _VAL_STREAM]), y)
    if len(val) == 0 or len(train) == 0:
        side = "validation split" if len(val) == 0 else "victim's training part"
        raise PoisonlabError(f"data.val_fraction={val_fraction} of the victim's {n_rows} rows leaves the {side} "
                             f"empty; use more rows or a fraction nearer 0.1")
    return train, val
