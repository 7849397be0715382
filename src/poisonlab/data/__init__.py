"""Data sets: one module per family, all registered in :data:`DATASETS`."""
from __future__ import annotations

# Loaders that register themselves on import; a missing module is a bug, not optional.
from . import (
    adult,  # noqa: F401
    cifar10,  # noqa: F401
    digits,  # noqa: F401  (registers "digits")
    gtsrb,  # noqa: F401
    idx,  # noqa: F401  (registers mnist, fashion-mnist)
    image_folder,  # noqa: F401  (registers the image-folder reader)
    imdb,  # noqa: F401
    npz_data,  # noqa: F401  (registers npz)
    table,  # noqa: F401  (registers csv, parquet)
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
from .user_data import (
    READERS,
    from_arrays,
    load_data,
    register_dataset,
    unregister_dataset,
)

__all__ = [
    "DATASETS",
    "READERS",
    "DataSplit",
    "Dataset",
    "DatasetSpec",
    "default_data_dir",
    "from_arrays",
    "load_data",
    "load_dataset",
    "register_dataset",
    "search_roots",
    "unregister_dataset",
]
