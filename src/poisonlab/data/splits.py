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


def keep_classes(data: "Dataset", classes: list[int] | None, where: str = "data.classes") -> "Dataset":
    """Only the rows of ``classes`` (class indices of ``data``), relabelled 0..k-1 in the order
    given, with their names (MNIST 1-vs-7: ``[1, 7]``); one-line error for a class not in the data."""
    if not classes:
        return data
    import torch

    from ..errors import PoisonlabError

    if data.is_regression:
        raise PoisonlabError(f"{where} picks classes, but the data are regression (data.options.task: regression) "
                             "and have none; remove it")

    c = data.num_classes
    for k in classes:
        if not 0 <= k < c:
            raise PoisonlabError(f"{where} holds {k}; the data set has classes 0..{c - 1}")
    lookup = torch.full((c,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    mapped = lookup[data.y]
    rows = (mapped >= 0).nonzero().flatten()
    meta = {k: v[rows.numpy()] for k, v in data.meta.items()}
    return type(data)(data.x[rows], mapped[rows], [data.classes[k] for k in classes], meta)
