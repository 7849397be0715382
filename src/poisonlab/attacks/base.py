"""What every attack provides, and the attack registry.

An attack is a value object built from config. ``poison(train, rng)`` returns the new
training set and a boolean mask of the poison rows (defenses are scored against it);
``evaluation_set(test)`` says how the attack is measured on test data.

:func:`arrays_or_dataset` lets a ``poison`` method also take plain arrays, the habit of
array-first libraries (e.g. ART's ``poison(x, y)``): ``attack.poison(x, y, seed=0)`` returns
``(x_poisoned, y_poisoned, poison_mask)`` in the input's array type (numpy or torch).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..checks import SEED_MAX
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from ..registry import Registry


@dataclass
class PoisonResult:
    """The poisoned training set, which rows are poison, and which clean rows they copy."""

    dataset: Dataset
    poison_mask: torch.Tensor
    source_index: torch.Tensor

    @property
    def n_poison(self) -> int:
        return int(self.poison_mask.sum())


@dataclass
class AttackTestSet:
    """Test inputs carrying the attack, the labels the attacker wants, the true labels,
    and the test-set row each one was made from."""

    x: torch.Tensor
    target: torch.Tensor
    true: torch.Tensor
    rows: torch.Tensor
    untargeted: bool = False
    """True when any wrong label counts as success (``target`` is then not used)."""

    def success(self, pred: torch.Tensor) -> torch.Tensor:
        """Per-row attack success of predictions ``pred`` on ``x``."""
        return pred != self.true if self.untargeted else pred == self.target


class Attack(Protocol):
    """A poisoning attack (see module docstring)."""

    name: str

    def check(self, train: Dataset) -> None: ...

    def poison(self, train: Dataset, rng: np.random.Generator) -> PoisonResult: ...

    def evaluation_set(self, test: Dataset) -> AttackTestSet: ...

    def describe(self) -> dict[str, Any]: ...


ATTACKS: Registry[Any] = Registry("attack")


# -- poison(x, y): arrays in, arrays out ----------------------------------------------------
def _labels_of(y: Any, n: int) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim != 1 or len(a) != n:
        raise PoisonlabError(f"poison(x, y): y must be one label per row of x (shape ({n},)), got shape {a.shape}")
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise PoisonlabError(f"poison(x, y): y must hold integer class indices, got dtype {a.dtype}")
    if n and a.min() < 0:
        raise PoisonlabError(f"poison(x, y): y holds {a.min()}; class indices are 0..K-1")
    return a.astype(np.int64)


def _class_names(classes: int | Sequence[str] | None, y: np.ndarray) -> list[str]:
    k = int(y.max()) + 1 if len(y) else 1
    if classes is None:
        return [str(c) for c in range(k)]
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        names = [str(c) for c in range(int(classes))]
    elif isinstance(classes, Sequence) and not isinstance(classes, str):
        names = [str(c) for c in classes]
    else:
        raise PoisonlabError(f"poison(x, y): classes must be a number of classes or a list of names, got {shown(classes)}")
    if len(names) < k:
        raise PoisonlabError(f"poison(x, y): y holds class {k - 1} but classes names only {len(names)}")
    return names


def dataset_from_arrays(x: Any, y: Any, classes: int | Sequence[str] | None = None) -> tuple[Dataset, bool]:
    """``x`` (N, C, H, W), (N, H, W) images with values in [0, 1], or (N, F) rows, and labels
    ``y`` as a :class:`Dataset` (sharing memory where it can), and whether a channel axis was added."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise PoisonlabError(f"poison(x, y): x must be a numeric array, got dtype {a.dtype}")
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if t.dim() < 2:
        raise PoisonlabError(f"poison(x, y): x must be (N, C, H, W) or (N, H, W) images or (N, F) rows, "
                             f"got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise PoisonlabError(f"poison(x, y): x must be floats (images in [0, 1]), got dtype {t.dtype}; "
                             f"convert with x / 255")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise PoisonlabError("poison(x, y): x holds NaN or infinite values")
    if t.dim() >= 3 and t.numel() and not (float(t.min()) >= 0 and float(t.max()) <= 1):
        raise PoisonlabError(f"poison(x, y): image values must be in [0, 1], got {float(t.min()):g}..{float(t.max()):g}")
    labels = _labels_of(y, len(t))
    added = t.dim() == 3
    return Dataset(t.unsqueeze(1) if added else t, torch.from_numpy(labels), _class_names(classes, labels)), added


def _like(out: torch.Tensor, like: Any) -> Any:
    """``out`` in the array type of ``like``: a tensor on its device and of its dtype, else numpy."""
    if isinstance(like, torch.Tensor):
        return out.to(device=like.device, dtype=like.dtype if out.dtype != torch.bool else torch.bool)
    a = out.numpy()
    base = np.asarray(like)
    return a.astype(base.dtype, copy=False) if a.dtype != bool and base.dtype.kind in "iuf" else a


def arrays_or_dataset(poison: Callable[..., PoisonResult]) -> Callable[..., Any]:
    """Let ``poison(self, train: Dataset, rng, ...) -> PoisonResult`` also be called as
    ``poison(x, y, seed=0, classes=None)`` on numpy arrays or torch tensors, returning
    ``(x_poisoned, y_poisoned, poison_mask)`` of the input's array type (images (N, H, W) stay
    without a channel axis). The attack's ``check`` runs first. A :class:`Dataset` call goes to
    ``poison`` unchanged (the pipeline's)."""

    @functools.wraps(poison)
    def wrapper(self: Any, data: Any, *args: Any, seed: int | np.random.Generator | None = None,
                classes: int | Sequence[str] | None = None, **kw: Any) -> Any:
        if isinstance(data, Dataset):
            if seed is not None or classes is not None:
                raise PoisonlabError("poison(train, rng): seed and classes are for poison(x, y); pass an rng")
            return poison(self, data, *args, **kw)
        if not args:
            raise PoisonlabError("poison needs (train: Dataset, rng) or (x, y) arrays; y is missing")
        y, rest = args[0], args[1:]
        ds, added = dataset_from_arrays(data, y, classes)
        seed = 0 if seed is None else seed
        if isinstance(seed, np.random.Generator):
            rng = seed
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX:
            rng = np.random.default_rng(int(seed))
        else:
            raise PoisonlabError(f"poison(x, y): seed must be an integer in 0..{SEED_MAX} or a numpy Generator, "
                                 f"got {shown(seed)}")
        self.check(ds)
        result = poison(self, ds, rng, *rest, **kw)
        x_out = result.dataset.x.squeeze(1) if added else result.dataset.x
        return _like(x_out, data), _like(result.dataset.y, y), _like(result.poison_mask, data)

    return wrapper
