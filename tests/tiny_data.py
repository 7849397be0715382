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


def signs43(per_class: int, seed: int) -> Dataset:
    """3x20x20 colour images of 43 classes (stand-ins for GTSRB signs): class k lights the 2x2
    cell (k // 7, k % 7) of a 7x7 grid in the top-left 14x14 pixels; the bottom-right corner
    stays free for a trigger."""
    from poisonlab.data.gtsrb import CLASSES

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(43).repeat(per_class)
    x = torch.rand(len(y), 3, 20, 20, generator=g) * 0.2
    for k in range(43):
        r, c = divmod(k, 7)
        x[y == k, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 0.8
    return Dataset(x, y, list(CLASSES))
