"""Seeded splits of a training set: the validation split and a size limit.

The validation split is always carved from the *training* data: hyperparameters,
stopping points and defense thresholds never see the test set.
"""
from __future__ import annotations

import numpy as np

from .base import Dataset


def carve_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split ``train`` into (rest, validation) with ``round(fraction * N)`` random rows held out.

    >>> import torch
    >>> ds = Dataset(torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long), ["a"])
    >>> rest, val = carve_validation(ds, 0.2, seed=0)
    >>> len(rest), len(val)
    (8, 2)
    """
    n_val = int(round(fraction * len(train)))
    if n_val == 0:
        return train, None
    perm = np.random.default_rng([seed, 0x7A1]).permutation(len(train))
    return train.subset(np.sort(perm[n_val:])), train.subset(np.sort(perm[:n_val]))


def limit_rows(data: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of at most ``limit`` rows (for quick runs)."""
    if limit is None or limit >= len(data):
        return data
    idx = np.random.default_rng([seed, 0x11]).choice(len(data), size=limit, replace=False)
    return data.subset(np.sort(idx))
