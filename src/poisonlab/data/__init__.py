"""Data sets: one module per family, all registered in :data:`DATASETS`."""
from __future__ import annotations

# Loaders that register themselves on import; a missing module is a bug, not optional.
from . import (
    adult,  # noqa: F401
    cifar10,  # noqa: F401
    digits,  # noqa: F401  (registers "digits")
    gtsrb,  # noqa: F401
    idx,  # noqa: F401  (registers mnist, fashion-mnist)
    imdb,  # noqa: F401
)
from .base import (
    DATASETS,
    Dataset,
    DatasetSpec,
    DataSplit,
    default_data_dir,
    load_dataset,
    search_roots,
)

__all__ = ["DATASETS", "Dataset", "DataSplit", "DatasetSpec", "default_data_dir", "load_dataset", "search_roots"]
