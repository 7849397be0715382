"""The ``image-folder`` reader: your own images in class sub-folders, or a .tar/.tar.gz/.zip of them.

Layouts (``data.path`` is the folder or archive)::

    root/<class>/*.png|jpg|jpeg                       (a seeded, stratified test split is drawn)
    root/train/<class>/...  and  root/test/<class>/... (the given split)

Class names are the sorted sub-folder names (images may sit deeper inside a class
folder; names starting with ``.`` are skipped). Each PNG/JPEG is decoded with Pillow,
converted to RGB or grayscale (``channels: 1|3``; default 3 unless every image is
single-channel) and resized bilinearly to ``image_size`` x ``image_size`` (default 32):
x is float32 (N, C, H, W) in [0, 1].

Hostile input: files are read only as regular files inside the folder (links, FIFOs and
devices are one-line errors, linked sub-folders too), each under ``$POISONLAB_MAX_FILE_MB``;
an image declaring more than :data:`MAX_PIXELS` pixels is refused before it is decoded;
archives are read with the bounded readers of :mod:`.archives`.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError, one_line, shown
from .base import Dataset, DataSplit
from .images import decode
from .safe_files import (
    check_real_dir,
    is_archive,
    iter_archive,
    member_label,
    read_regular_file,
)
from .user_data import (
    READERS,
    Option,
    ReaderSpec,
    fraction_option,
    int_option,
    seed_option,
    stratified_split,
)

NAME = "image-folder"
SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 4096 * 4096  # a 12-megapixel photo fits; checked from the header, before decoding
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SPLITS = ("train", "test")


def _channels(v: Any, where: str) -> int | None:
    if v is None or (v in (1, 3) and not isinstance(v, bool)):
        return v
    raise PoisonlabError(f"{where} must be 1 (grayscale) or 3 (RGB), got {shown(v)}")


OPTIONS = {
    "image_size": int_option(32, 1, 1024),
    "channels": Option(None, _channels),
    "test_fraction": fraction_option(0.2),
    "split_seed": seed_option(),
}


def _is_image(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) and not name.startswith(".")


def _native_gray(data: bytes) -> bool:
    """Whether an image is stored with one channel (a header read only; a bad file is left to :func:`decode`)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
                return im.mode in GRAY_MODES
    except Exception:  # noqa: BLE001 - decode() names the problem
        return False


@dataclass
class _Images:
    """Decoded images (uint8, H x W or H x W x 3), their split (train/test/None) and class folder."""

    size: int
    channels: int | None
    arrays: list[np.ndarray] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def add(self, data: bytes, label: str, split: str | None, cls: str) -> None:
        gray = self.channels == 1 or (self.channels is None and _native_gray(data))
        self.arrays.append(decode(data, label, mode="L" if gray else "RGB", max_pixels=MAX_PIXELS, formats=FORMATS,
                                  what=f"{NAME}: cannot decode image", fix="replace or remove the file",
                                  resize=(self.size, self.size)))
        self.splits.append(split)
        self.classes.append(cls)

    def tensor(self, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` as float32 (N, C, H, W) in [0, 1]; C from the option or from the images."""
        c = self.channels or (1 if all(a.ndim == 2 for a in self.arrays) else 3)
        out = np.empty((len(rows), self.size, self.size, c), dtype=np.uint8)
        for i, r in enumerate(rows):
            a = self.arrays[r]
            out[i] = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


# ---------------------------------------------------------------- folders


def _walk_error(e: OSError) -> None:
    raise PoisonlabError(f"{NAME}: cannot list {e.filename}: {e.strerror or e}") from e


def _subdirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders (a linked one is refused, never followed)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise PoisonlabError(f"{NAME}: cannot list {folder}: {e.strerror or e}") from e
    out = []
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_symlink() and os.path.isdir(e.path):
            check_real_dir(e.path, f"{NAME}: {e.path}")
        if e.is_dir(follow_symlinks=False):
            out.append(e.name)
    return out


def _class_files(folder: Path) -> list[str]:
    """Every image file under a class folder, in sorted order (links to folders refused)."""
    files: list[str] = []
    for dirpath, dirnames, names in os.walk(folder, onerror=_walk_error):
        for d in dirnames:
            check_real_dir(os.path.join(dirpath, d), f"{NAME}: {os.path.join(dirpath, d)}")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, n) for n in sorted(names) if _is_image(n)]
    return files


def _loose_images(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if _is_image(n) and os.path.isfile(folder / n))
    except OSError:
        return []


def _no_classes(folder: Path) -> PoisonlabError:
    loose = _loose_images(folder)
    found = f" (it holds {len(loose)} images directly, e.g. {one_line(loose[0], 80)})" if loose else ""
    return PoisonlabError(f"{NAME}: {folder}: no class sub-folders{found}; put each class's images in its own "
                          f"folder: {folder}/<class>/*.png|jpg|jpeg")


def _check_classes(classes: list[str], top: Path) -> None:
    if len(classes) < 2:
        hint = f" ('{one_line(classes[0], 80)}'; if it holds the class folders, point data.path at it)" if classes else ""
        raise PoisonlabError(f"{NAME}: {top}: {len(classes)} class folder{hint}; a classifier needs at least 2")


def _read_folder(root: Path, images: _Images) -> None:
    subs = _subdirs(root)
    split_layout = "train" in subs and bool(_subdirs(root / "train"))
    tops: list[tuple[str | None, Path]] = [(s, root / s) for s in SPLITS if s in subs] if split_layout \
        else [(None, root)]
    for split, top in tops:
        classes = _subdirs(top)
        if not classes:
            raise _no_classes(top)
        if split != "test":
            _check_classes(classes, top)  # before anything is decoded
        for cls in classes:
            files = _class_files(top / cls)
            if not files:
                raise PoisonlabError(f"{NAME}: {top / cls}: no .png/.jpg/.jpeg images in this class folder; "
                                     "add images or remove the folder")
            for f in files:
                images.add(read_regular_file(f, root, label=f"{NAME}: {f}"), f, split, cls)


# ---------------------------------------------------------------- archives


def _read_archive(archive: Path, images: _Images) -> None:
    """Members decoded as they stream by; the layout is worked out from their names afterwards."""
    dirs: list[list[str]] = []
    names: list[str] = []

    def wanted(name: str) -> bool:
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        return bool(parts) and _is_image(parts[-1]) and not any(p.startswith(".") for p in parts)

    for name, data in iter_archive(archive, wanted):
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) < 2:
            raise PoisonlabError(f"{NAME}: {member_label(archive, name)}: an image outside any class folder; "
                                 "put each class's images in its own folder (<class>/*.png)")
        images.add(data, member_label(archive, name), None, "")
        dirs.append(parts[:-1])
        names.append(parts[-1])
    if not dirs:
        raise PoisonlabError(f"{NAME}: {archive}: no .png/.jpg/.jpeg images in class folders")
    order = sorted(range(len(dirs)), key=lambda i: (dirs[i], names[i]))  # as a folder is read, whatever the archive order
    images.arrays, dirs = [images.arrays[i] for i in order], [dirs[i] for i in order]
    while all(len(d) >= 2 for d in dirs) and len({d[0] for d in dirs}) == 1:
        dirs = [d[1:] for d in dirs]  # a common top folder (e.g. CIFAR-10-images/)
    if all(len(d) >= 2 and d[0] in SPLITS for d in dirs) and any(d[0] == "train" for d in dirs):
        images.splits, images.classes = [d[0] for d in dirs], [d[1] for d in dirs]
    else:
        images.splits, images.classes = [None] * len(dirs), [d[0] for d in dirs]


# ---------------------------------------------------------------- loader


def load_image_folder(path: Path, options: dict[str, Any]) -> DataSplit:
    """An image data set from a class-folder tree or an archive of one (see the module docstring)."""
    images = _Images(options["image_size"], options["channels"])
    if path.is_dir():
        _read_folder(path, images)
    elif is_archive(path):
        _read_archive(path, images)
    else:
        raise PoisonlabError(f"{NAME}: data.path {path} is neither a folder nor a .tar/.tar.gz/.tgz/.zip archive")
    split = np.array([s or "" for s in images.splits])
    train_classes = sorted({c for c, s in zip(images.classes, images.splits) if s != "test"})
    _check_classes(train_classes, path / "train" if "train" in split else path)
    index = {c: i for i, c in enumerate(train_classes)}
    extra = sorted({c for c in images.classes if c not in index})
    if extra:
        raise PoisonlabError(f"{NAME}: {path}: test class folder '{one_line(extra[0], 80)}' has no training folder "
                             f"of the same name; training classes: {', '.join(train_classes)}"[:600])
    y = np.array([index[c] for c in images.classes], dtype=np.int64)
    if "test" in split:
        train_idx, test_idx = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    else:
        train_idx, test_idx = stratified_split(y, options["test_fraction"], options["split_seed"], f"{NAME}: {path}")
    classes = list(train_classes)
    return DataSplit(Dataset(images.tensor(train_idx), torch.from_numpy(y[train_idx]), classes),
                     Dataset(images.tensor(test_idx), torch.from_numpy(y[test_idx]), list(classes)))


READERS.register(NAME)(ReaderSpec(NAME, "PNG/JPEG images in class sub-folders (optionally train/ and test/), "
                                  "or an archive of them; resized to image_size", OPTIONS, load_image_folder))
