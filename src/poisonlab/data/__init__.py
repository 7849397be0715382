"""Data sets: one module per family, all registered in :data:`DATASETS`."""
from __future__ import annotations

from .base import DATASETS, Dataset, DataSplit, DatasetSpec, default_data_dir, load_dataset, search_roots
from . import digits  # noqa: F401  (registers "digits")

# Loaders that register themselves on import; a missing module is a bug, not optional.
from . import idx  # noqa: F401  (registers mnist, fashion-mnist)
from . import gtsrb  # noqa: F401
from . import cifar10  # noqa: F401

__all__ = ["DATASETS", "Dataset", "DataSplit", "DatasetSpec", "default_data_dir", "load_dataset", "search_roots"]
