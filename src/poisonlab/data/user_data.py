"""Bring your own data: readers by name, arrays from Python, and the one entry point :func:`load_data`.

A config's ``data:`` section names a built-in data set (``mnist``), a data set registered
from Python with :func:`register_dataset`, or a reader that takes ``path`` and ``options``::

    data: {name: image-folder, path: ./faces, options: {image_size: 32}}
    data: {name: csv, path: t.csv, options: {label: income}}
    data: {name: npz, path: d.npz}

Readers live in :data:`READERS` (``image-folder``, ``csv``, ``parquet``, ``npz``; each module
registers its own). :func:`from_arrays` turns numpy arrays or torch tensors into a
:class:`DataSplit` (images NCHW in [0, 1], tabular rows float32, labels 0..K-1).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import SEED_MAX, need_int, need_number
from ..errors import PoisonlabError, did_you_mean, one_line, shown
from ..registry import Registry
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, load_dataset

MAX_PATH_CHARS = 4096
MAX_OPTIONS = 64
MAX_LIST = 100_000


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One reader option: its default and a check turning a config value into a valid one."""

    default: Any
    check: Callable[[Any, str], Any]
    required: bool = False


def int_option(default: int, lo: int, hi: int) -> Option:
    return Option(default, lambda v, where: need_int(v, where, lo, hi))


def fraction_option(default: float) -> Option:
    return Option(default, lambda v, where: need_number(v, where, 0, 1, low_open=True, high_open=True))


def seed_option() -> Option:
    return Option(0, lambda v, where: need_int(v, where, 0, SEED_MAX))


def _text(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_PATH_CHARS or "\x00" in v:
        raise PoisonlabError(f"{where} must be a non-empty string, got {shown(v)}")
    return v


def text_option(default: str | None = None, required: bool = False) -> Option:
    return Option(default, lambda v, where: None if v is None and not required else _text(v, where), required)


def list_option() -> Option:
    def check(v: Any, where: str) -> list[str]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or len(v) > MAX_LIST:
            raise PoisonlabError(f"{where} must be a list of column names, got {shown(v)}")
        return [_text(c, f"{where}[{i}]") for i, c in enumerate(v)]

    return Option((), check)


@dataclass(frozen=True)
class ReaderSpec:
    """A reader of user files: ``load(path, options)`` with options checked against ``options``."""

    name: str
    description: str
    options: Mapping[str, Option]
    load: Callable[[Path, dict[str, Any]], DataSplit]


READERS: Registry[ReaderSpec] = Registry("data reader")


def parse_options(spec: ReaderSpec, options: Any, where: str = "data.options") -> dict[str, Any]:
    """``options`` checked (unknown keys with a did-you-mean, values, required keys) and completed with defaults."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise PoisonlabError(f"{where} must be a mapping of option names to values, got {shown(options)}")
    allowed = sorted(spec.options)
    if len(options) > MAX_OPTIONS:
        raise PoisonlabError(f"{where} has {len(options)} keys; reader '{spec.name}' takes {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in spec.options:
            hint = did_you_mean(key, allowed) if isinstance(key, str) and len(key) <= 100 else ""
            name = f"'{one_line(key, 60)}'" if isinstance(key, str) else shown(key)
            raise PoisonlabError(f"{where}: unknown option {name} for reader '{spec.name}'{hint}; "
                                 f"allowed: {', '.join(allowed)}")
        out[key] = spec.options[key].check(value, f"{where}.{key}")
    for key, opt in spec.options.items():
        if key not in out:
            if opt.required:
                raise PoisonlabError(f"{where}.{key} is required by reader '{spec.name}' "
                                     f"(e.g. options: {{{key}: ...}})")
            out[key] = opt.default
    return out


# ---------------------------------------------------------------- splits and labels


def stratified_split(y: np.ndarray, fraction: float, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices: ``round(fraction * n_c)`` rows of each class to test, at least one of
    every class with two rows or more, seeded by ``seed``; a one-line error when the test set would be empty."""
    rng = np.random.default_rng([seed, 0x5E1])
    test: list[np.ndarray] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(max(round(fraction * len(rows)), 1 if len(rows) >= 2 else 0), len(rows) - 1)
        test.append(rng.permutation(rows)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    if len(test_idx) == 0:
        raise PoisonlabError(f"{source}: {len(y)} rows are too few for a test split (test_fraction {fraction:g}); "
                             "add rows or give a separate test set")
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def random_split(n: int, fraction: float, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices, ``round(fraction * n)`` random rows (at least 1, at most
    ``n - 1``) to test, seeded by ``seed``: the split of a regression table (no classes to stratify)."""
    k = min(max(round(fraction * n), 1), n - 1)
    if k < 1:
        raise PoisonlabError(f"{source}: {n} rows are too few for a test split (test_fraction {fraction:g}); "
                             "add rows or give a separate test set")
    perm = np.random.default_rng([seed, 0x5E2]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def sort_labels(values: set[str]) -> list[str]:
    """Label strings in order: numerically when every one is a number (``2 < 10``), else as strings."""
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _as_numpy(a: Any, name: str, source: str) -> np.ndarray:
    if torch.is_tensor(a):
        t = a.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    try:
        out = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise PoisonlabError(f"{source}: {name} is not an array ({one_line(str(e), 120)})") from e
    if out.dtype.hasobject and out.dtype.kind == "O":
        try:
            out = out.astype(str) if name.startswith("y") else out.astype(np.float64)
        except (ValueError, TypeError) as e:
            raise PoisonlabError(f"{source}: {name} holds values that are not numbers ({shown(out.flat[0])})") from e
    return out


def _codes(y: np.ndarray, y_test: np.ndarray | None, classes: Any, source: str) -> tuple[np.ndarray, np.ndarray | None,
                                                                                         list[str]]:
    """Labels as class indices 0..K-1 and the class names (see :func:`from_arrays`)."""
    parts = [y] if y_test is None else [y, y_test]
    for name, a in zip(("y", "y_test"), parts):
        if a.dtype.kind not in "biufUS":
            raise PoisonlabError(f"{source}: {name} has dtype {a.dtype}; labels must be integers or strings")
        if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise PoisonlabError(f"{source}: {name} holds non-integer labels (e.g. {shown(a[a != np.round(a)][:1])}); "
                                 "labels must be whole numbers or strings")
    if classes is not None:
        names = [str(c) for c in _as_numpy(classes, "classes", source).reshape(-1).tolist()]
        if len(set(names)) != len(names) or not names:
            raise PoisonlabError(f"{source}: classes must be distinct names, got {shown(names)}")
        out = []
        for name, a in zip(("y", "y_test"), parts):
            if a.dtype.kind in "US" or len(a) and not (0 <= a.min() and a.max() < len(names)):
                raise PoisonlabError(f"{source}: {name} must hold class indices 0..{len(names) - 1} "
                                     f"(one per name in classes), got {shown(np.unique(a)[:6].tolist())}")
            out.append(a.astype(np.int64))
        return out[0], (out[1] if y_test is not None else None), names
    if any(a.dtype.kind in "US" for a in parts):
        strs = [a.astype(str) for a in parts]
        names = sort_labels(set(np.concatenate(strs).tolist()))
        index = {n: i for i, n in enumerate(names)}
        coded = [np.fromiter((index[v] for v in s.tolist()), np.int64, len(s)) for s in strs]
    else:
        ints = [a.astype(np.int64) for a in parts]
        uniq = np.unique(np.concatenate(ints))
        names = [str(int(v)) for v in uniq]
        coded = [np.searchsorted(uniq, a).astype(np.int64) for a in ints]
    if len(np.unique(coded[0])) < 2:
        raise PoisonlabError(f"{source}: the training labels hold {len(np.unique(coded[0]))} class; "
                             "a classifier needs at least 2")
    return coded[0], (coded[1] if y_test is not None else None), names


def _features(x: np.ndarray, name: str, source: str) -> torch.Tensor:
    """``x`` as float32 tabular rows (N, F) or images (N, C, H, W) in [0, 1] ((N, H, W) gains a channel)."""
    if x.dtype.kind not in "biuf":
        raise PoisonlabError(f"{source}: {name} has dtype {x.dtype}; features must be numbers")
    if x.ndim not in (2, 3, 4) or 0 in x.shape[1:]:
        raise PoisonlabError(f"{source}: {name} has shape {tuple(x.shape)}; expected (N, F) features, "
                             "(N, H, W) or (N, C, H, W) images")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim == 2 or x.dtype.kind == "b":
        out = np.asarray(x, dtype=np.float32)
        if x.ndim == 2 and out.size and not np.isfinite(out).all():
            raise PoisonlabError(f"{source}: {name} holds NaN or infinite values; fill them in first")
        return torch.from_numpy(np.ascontiguousarray(out))
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise PoisonlabError(f"{source}: integer images in {name} must be in 0..255, got {x.min()}..{x.max()}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)).to(torch.float32).div_(255.0)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if out.size and not (np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1):
        lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
        raise PoisonlabError(f"{source}: image values in {name} must be in [0, 1] (or uint8 0..255), "
                             f"got {lo:g}..{hi:g} or NaN; divide by 255 or store uint8")
    return torch.from_numpy(out)


def from_arrays(x: Any, y: Any, x_test: Any = None, y_test: Any = None, classes: Any = None,
                test_fraction: float = 0.2, split_seed: int = 0, *, source: str = "from_arrays") -> DataSplit:
    """A :class:`DataSplit` from numpy arrays or torch tensors.

    ``x`` (N, F) is tabular, (N, H, W) or (N, C, H, W) images (uint8 0..255 or floats in
    [0, 1]). ``y`` holds integers (or strings): with ``classes`` (names) they must be indices
    0..K-1, else they are mapped to their sorted unique values (names ``str(value)``).
    Without ``x_test``/``y_test`` a stratified ``test_fraction`` of the rows, drawn with
    ``split_seed``, becomes the test set. ``source`` names the data in error messages.

    >>> s = from_arrays(np.eye(4), [5, 7, 5, 7], test_fraction=0.5)
    >>> s.train.classes, len(s.train), len(s.test)
    (['5', '7'], 2, 2)
    """
    if (x_test is None) != (y_test is None):
        raise PoisonlabError(f"{source}: give both x_test and y_test, or neither (a seeded split is drawn then)")
    need_number(test_fraction, f"{source}: test_fraction", 0, 1, low_open=True, high_open=True)
    need_int(split_seed, f"{source}: split_seed", 0, SEED_MAX)
    xs = [_as_numpy(x, "x", source)] + ([_as_numpy(x_test, "x_test", source)] if x_test is not None else [])
    ys = [_as_numpy(y, "y", source)] + ([_as_numpy(y_test, "y_test", source)] if y_test is not None else [])
    for i, (xa, ya) in enumerate(zip(xs, ys)):
        xn, yn = ("x", "y") if i == 0 else ("x_test", "y_test")
        if ya.ndim == 2 and ya.shape[1] == 1:
            ys[i] = ya = ya[:, 0]
        if xa.ndim == 0:
            raise PoisonlabError(f"{source}: {xn} is a single number; expected (N, F) features or (N, C, H, W) images")
        if ya.ndim != 1:
            raise PoisonlabError(f"{source}: {yn} must be one label per row (shape (N,)), got shape {tuple(ya.shape)}")
        if len(xa) != len(ya):
            raise PoisonlabError(f"{source}: {xn} has {len(xa)} rows but {yn} has {len(ya)}; they must match")
    if len(xs) == 2 and (xs[1].ndim != xs[0].ndim or xs[1].shape[1:] != xs[0].shape[1:]):
        raise PoisonlabError(f"{source}: x_test rows have shape {tuple(xs[1].shape[1:])} but x rows "
                             f"{tuple(xs[0].shape[1:])}; they must match")
    y_train, y_te, names = _codes(ys[0], ys[1] if len(ys) == 2 else None, classes, source)
    x_train = _features(xs[0], "x", source)
    if len(xs) == 2:
        return DataSplit(Dataset(x_train, torch.from_numpy(y_train), names),
                         Dataset(_features(xs[1], "x_test", source), torch.from_numpy(y_te), list(names)))
    train_idx, test_idx = stratified_split(y_train, test_fraction, split_seed, source)
    full = Dataset(x_train, torch.from_numpy(y_train), names)
    return DataSplit(full.subset(train_idx), full.subset(test_idx))


# ---------------------------------------------------------------- data sets registered from Python

_USER: set[str] = set()


def register_dataset(name: str, split_or_callable: DataSplit | Callable[[], DataSplit], description: str = "") -> None:
    """Make an in-memory data set usable from a config (``data: {name: NAME}``).

    ``split_or_callable`` is a :class:`DataSplit` or a function returning one (called at each
    load). Registering a name again replaces it; a built-in data set's or a reader's name is an error.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise PoisonlabError(f"data set name must be 1-64 letters, digits, '-', '_' or '.', got {shown(name)}")
    if name in READERS:
        raise PoisonlabError(f"'{name}' is the name of a data reader; register your data set under another name")
    if name in DATASETS and name not in _USER:
        raise PoisonlabError(f"'{name}' is a built-in data set; register your data set under another name")
    if not isinstance(split_or_callable, DataSplit) and not callable(split_or_callable):
        raise PoisonlabError(f"register_dataset('{name}', ...) needs a DataSplit or a function returning one, "
                             f"got {type(split_or_callable).__name__} (use from_arrays(x, y) to make one)")

    def load(roots: list[Path], download: bool) -> DataSplit:
        split = split_or_callable() if callable(split_or_callable) else split_or_callable
        if not isinstance(split, DataSplit):
            raise PoisonlabError(f"data set '{name}': its function returned {type(split).__name__}, not a DataSplit")
        return split

    spec = DatasetSpec(name=name, description=description or "registered from Python (in memory)", subdirs=("",),
                       files=(), load=load, embedded=True)
    DATASETS._items[name] = spec  # the registry refuses a second register(); a user name may be replaced
    _USER.add(name)


def unregister_dataset(name: str) -> None:
    """Forget a data set registered with :func:`register_dataset` (a built-in one is an error)."""
    if name not in _USER:
        raise PoisonlabError(f"'{one_line(str(name), 80)}' was not registered with register_dataset")
    _USER.discard(name)
    DATASETS._items.pop(name, None)


# ---------------------------------------------------------------- the entry point


def _field(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def check_data_config(cfg: Any, where: str = "data") -> dict[str, Any] | None:
    """Check a ``data:`` section's ``path`` and ``options`` against its ``name`` without reading a file.

    Returns the completed options of a reader (None for a data set). A reader needs
    ``path``; a data set takes neither. An unknown name with no path or options is left
    to the loader (its message lists the data sets).
    """
    name, path, options = _field(cfg, "name"), _field(cfg, "path"), _field(cfg, "options") or {}
    if path is not None:
        _text(path, f"{where}.path")
    if not isinstance(options, Mapping):
        raise PoisonlabError(f"{where}.options must be a mapping, got {shown(options)}")
    if isinstance(name, str) and name in READERS:
        spec = READERS.get(name)
        if path is None:
            raise PoisonlabError(f"{where}.path is required by reader '{name}' (the file or folder to read, e.g. "
                                 f"data: {{name: {name}, path: ...}})")
        return parse_options(spec, options, f"{where}.options")
    given = [k for k, v in (("path", path), ("options", options)) if v]
    if given and isinstance(name, str) and name in DATASETS:
        raise PoisonlabError(f"data set '{name}' takes no {where}.{given[0]} (it is found by name in --data-dir); "
                             f"readers of your own files: {', '.join(READERS.names())}")
    if given:
        known = DATASETS.names() + READERS.names()
        hint = did_you_mean(name, known) if isinstance(name, str) and len(name) <= 100 else ""
        raise PoisonlabError(f"unknown data reader {shown(name)}{hint}; readers: {', '.join(READERS.names())}; "
                             f"data sets: {', '.join(DATASETS.names())}")
    return None


def resolve_path(path: str) -> Path:
    """``path`` with ``~`` expanded, relative to the current folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.getcwd()) / p


def load_data(cfg: Any) -> DataSplit:
    """The data of a ``data:`` config section (or a mapping with its keys): a reader's
    (``name`` in :data:`READERS`, with ``path`` and ``options``) or a data set's by name
    (:func:`~poisonlab.data.base.load_dataset` with ``dir`` and ``download``)."""
    options = check_data_config(cfg)
    name = _field(cfg, "name")
    if options is not None:
        path = resolve_path(_field(cfg, "path"))
        if not os.path.lexists(path):
            raise PoisonlabError(f"{name}: data.path '{one_line(str(path), 300)}' does not exist")
        return READERS.get(name).load(path, options)
    return load_dataset(name, _field(cfg, "dir"), bool(_field(cfg, "download", False)))
