"""scikit-learn's bundled 8x8 handwritten digits: the embedded default data set.

1,797 images, no download. The split is fixed (stratified, seed 0, 25% test) so every
user and every run sees the same test set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, Dataset, DatasetSpec, DataSplit

TEST_FRACTION = 0.25


def load_digits_split(roots: list[Path] | None = None, download: bool = False) -> DataSplit:
    """Images (N, 1, 8, 8) scaled to [0, 1] (the raw values run 0..16)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=0, stratify=y)
    classes = [str(i) for i in range(10)]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return DataSplit(
        Dataset(xt[np.sort(train_idx)], yt[np.sort(train_idx)], classes),
        Dataset(xt[np.sort(test_idx)], yt[np.sort(test_idx)], classes),
    )


DATASETS.register("digits")(
    DatasetSpec(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits (1,797 images, embedded, no download)",
        subdirs=(),
        files=(),
        load=load_digits_split,
        embedded=True,
    )
)
