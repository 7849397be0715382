"""Tiny, trivially separable image data sets shared by tests."""
from __future__ import annotations

import torch

from poisonlab.data.base import Dataset


def separable(n: int, seed: int) -> Dataset:
    """16x16 grey images of 3 classes: class k has a bright block in column band k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    for k in range(3):
        x[y == k, :, 5:11, 1 + 5 * k:5 + 5 * k] += 0.8
    return Dataset(x, y, ["a", "b", "c"])
