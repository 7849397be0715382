"""The in-memory data set container and the data-set registry.

Everything flows as tensors held in memory (DESIGN.md, "One path for the data"):
images are float32 NCHW in [0, 1], tabular rows are float32 feature vectors, labels are
int64. A regression set (Jagielski et al., S&P 2018) has no classes (``classes == []``,
``num_classes == 0``) and float responses ``y``: :attr:`Dataset.is_regression`. Optional
per-row metadata (e.g. Adult's education/race/sex) rides along.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..errors import PoisonlabError
from ..registry import Registry


@dataclass
class Dataset:
    """Tensors ``x`` (N, ...) and ``y`` (N,), class names, optional per-row metadata.

    >>> ds = Dataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), ["a", "b"])
    >>> len(ds), ds.num_classes
    (2, 2)
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.classes or not self.y.is_floating_point():  # a regression set keeps its float responses
            self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_regression(self) -> bool:
        """No classes and float responses: a regression set (``data.options.task: regression``)."""
        return not self.classes and self.y.is_floating_point()

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    def subset(self, index: torch.Tensor | np.ndarray) -> "Dataset":
        """Rows selected by an integer index or a boolean mask."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        meta = {k: v[idx.numpy()] for k, v in self.meta.items()}
        return Dataset(self.x[idx], self.y[idx], list(self.classes), meta)


@dataclass
class DataSplit:
    """A training set and a test set of one data set."""

    train: Dataset
    test: Dataset


class Loader(Protocol):
    def __call__(self, roots: list[Path], download: bool) -> DataSplit: ...


@dataclass
class DatasetSpec:
    """How a data set is found and loaded.

    ``subdirs`` are folder names tried under each search root (``""`` means the root
    itself); ``files`` lists what the loader needs, as shown by ``poisonlab datasets``
    (alternatives separated by `` | ``); ``load`` receives the candidate folders.
    """

    name: str
    description: str
    subdirs: tuple[str, ...]
    files: tuple[str, ...]
    load: Callable[[list[Path], bool], DataSplit]
    embedded: bool = False
    downloadable: bool = False

    def candidate_dirs(self, data_dir: str | Path | None = None) -> list[Path]:
        """Folders searched in order: each root joined with each subdir."""
        dirs: list[Path] = []
        for root in search_roots(data_dir):
            for sub in self.subdirs:
                d = root / sub if sub else root
                if d not in dirs:
                    dirs.append(d)
        return dirs

    def present(self, data_dir: str | Path | None = None) -> tuple[bool, Path | None]:
        """Whether every required file is in one candidate folder, and which folder."""
        if self.embedded:
            return True, None
        for d in self.candidate_dirs(data_dir):
            if all(any(_alt_exists(d, alt.strip()) for alt in f.split("|")) for f in self.files):
                return True, d
        return False, None


def _alt_exists(folder: Path, name: str) -> bool:
    """Whether ``folder / name`` exists; a name with ``*?[`` is a glob (e.g. ``GTSRB*.zip``)."""
    if any(c in name for c in "*?["):
        return any(True for _ in folder.glob(name)) if folder.is_dir() else False
    return (folder / name).exists()


DATASETS: Registry[DatasetSpec] = Registry("data set")


def default_data_dir() -> Path:
    """Where downloads go and the first place searched: ``$POISONLAB_DATA`` or ``~/.cache/poisonlab``."""
    env = os.environ.get("POISONLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "poisonlab"


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """Roots searched in order: ``--data-dir``, ``$POISONLAB_DATA``, ``~/.cache/poisonlab``, ``/usr/share/datasets``."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("POISONLAB_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(Path.home() / ".cache" / "poisonlab")
    roots.append(Path("/usr/share/datasets"))
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> DataSplit:
    """Load a registered data set by name.

    >>> split = load_dataset("digits")
    >>> split.train.x.shape[1:]
    torch.Size([1, 8, 8])
    """
    spec = DATASETS.get(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir() and not download:
        raise PoisonlabError(f"data dir '{data_dir}' does not exist; pass an existing folder with --data-dir")
    return spec.load(spec.candidate_dirs(data_dir), download)


def as_image_batch(x: Any, name: str, why: str) -> torch.Tensor:
    """The (N, C, H, W) tensor of ``x`` (a tensor or a :class:`Dataset`), detached; a one-line
    error naming ``name`` otherwise, ending with ``why`` (what needs images)."""
    if isinstance(x, Dataset):
        x = x.x
    if not isinstance(x, torch.Tensor):
        raise PoisonlabError(f"{name} must be an image tensor (N, C, H, W) or a Dataset, got {type(x).__name__}")
    if x.dim() != 4:
        raise PoisonlabError(f"{name} must be images (N, C, H, W); got shape {tuple(x.shape)} ({why})")
    return x.detach()


def not_found(dataset: str, what: str, roots: list[Path], hint: str = "") -> PoisonlabError:
    """The one-line error of a loader that found its data in none of ``roots``.

    ``what`` names what was looked for; ``hint`` ends the line (e.g. where to get the files).
    """
    shown = ", ".join(str(d) for d in roots)
    return PoisonlabError(f"{dataset}: no {what} found; searched {shown}; "
                          f"put it in one of these folders or pass --data-dir DIR{hint}")


def first_dir_with(dirs: list[Path], required: list[str], dataset: str) -> Path:
    """The first folder holding every file in ``required`` (each may list ``a|b`` alternatives).

    Raises a one-line error naming the missing files and the folders searched.
    """
    for d in dirs:
        if all(any((d / alt).exists() for alt in f.split("|")) for f in required):
            return d
    shown = ", ".join(str(d) for d in dirs)
    need = ", ".join(required)
    raise PoisonlabError(
        f"{dataset}: files not found ({need}); searched {shown}; "
        f"put them in one of these folders, pass --data-dir DIR"
        + (" or use --download" if DATASETS.get(dataset).downloadable else "")
    )
