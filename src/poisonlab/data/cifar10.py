"""CIFAR-10 from the official python batches (Krizhevsky 2009, "Learning Multiple Layers
of Features from Tiny Images").

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` (50,000 training
images), ``test_batch`` (10,000) and ``batches.meta``; each is a protocol-2 pickle of a
dict with ``b"data"`` (uint8, N x 3072: 1024 red, 1024 green, 1024 blue values, rows
first) and ``b"labels"`` (ints 0..9). The folder or the official
``cifar-10-python.tar.gz`` (read in memory, not extracted) is accepted.

Pickles can run code, so every batch is read with the restricted unpickler of
:mod:`.cifar_pickle` (only this format's opcodes and globals, mapped to stand-ins; arrays
built here from checked uint8 bytes). Files are read as regular files inside their folder
and members and files are capped in size (:mod:`.limits`, ``$POISONLAB_MAX_FILE_MB``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError, shown
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, not_found
from .cifar_pickle import BatchUnpickler, unpickle_batch  # noqa: F401  (re-exported)
from .safe_files import check_real_dir, iter_archive, member_label, read_regular_file, safe_extract
from .safe_files import download as fetch_url

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
PIXELS = 3 * 32 * 32
CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Override with $POISONLAB_MIRROR_CIFAR10 (a base URL; the archive name is appended).
URLS: dict[str, str] = {"cifar10": f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"}


def archive_url() -> str:
    """The archive's URL: ``$POISONLAB_MIRROR_CIFAR10`` + file name if set, else :data:`URLS`."""
    env = os.environ.get("POISONLAB_MIRROR_CIFAR10")
    return env.rstrip("/") + "/" + ARCHIVE if env else URLS["cifar10"]


# ---------------------------------------------------------------- batches


def batch_arrays(batch: dict[str, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(data uint8 (N, 3072), labels int64 (N,))`` of one batch."""
    data, labels = batch.get("data"), batch.get("labels")
    if data is None or labels is None:
        raise PoisonlabError(
            f"{source}: no 'data'/'labels' entries (found {shown(sorted(batch))}); not a CIFAR-10 batch"
        )
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PoisonlabError(f"{source}: 'data' must be a uint8 array of shape (N, {PIXELS}), found {found}")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        found = type(labels).__name__ if not isinstance(labels, list) else "a list with non-integers"
        raise PoisonlabError(f"{source}: 'labels' must be a list of integers, found {found}")
    if len(labels) != len(data):
        raise PoisonlabError(f"{source}: {len(labels)} labels for {len(data)} images")
    bad = [v for v in labels if not 0 <= v < len(CLASSES)]
    if bad:
        shown_label = bad[0] if abs(bad[0]) < 10**12 else "(a huge number)"
        raise PoisonlabError(f"{source}: label {shown_label} outside 0..{len(CLASSES) - 1}; "
                             "the file is corrupt")
    y = np.array(labels, dtype=np.int64)
    return data, y


def _class_names(blobs: dict[str, tuple[str, bytes]]) -> list[str]:
    if META not in blobs:
        return list(CLASSES)
    source, data = blobs[META]
    names = unpickle_batch(data, source).get("label_names")
    if (not isinstance(names, list) or len(names) != len(CLASSES)
            or not all(isinstance(n, (bytes, str)) and 0 < len(n) <= 200 for n in names)):
        raise PoisonlabError(f"{source}: 'label_names' must list {len(CLASSES)} class names (text of at most "
                             "200 characters)")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise PoisonlabError(f"{source}: a class name in 'label_names' is not UTF-8 text ({e.reason}); "
                             "not a genuine batches.meta") from e


def _dataset(blobs: dict[str, tuple[str, bytes]], names: tuple[str, ...], classes: list[str]) -> Dataset:
    parts = [batch_arrays(unpickle_batch(blobs[n][1], blobs[n][0]), blobs[n][0]) for n in names]
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return Dataset(x, torch.from_numpy(y), classes)


def _read_folder(folder: Path, root: Path) -> dict[str, tuple[str, bytes]]:
    blobs = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = folder / name
        if os.path.lexists(path):
            blobs[name] = (str(path), read_regular_file(path, root))
    return blobs


def _read_archive(archive: Path) -> dict[str, tuple[str, bytes]]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    blobs = {}
    for member, data in iter_archive(archive, lambda n: n.rsplit("/", 1)[-1] in wanted):
        blobs.setdefault(member.rsplit("/", 1)[-1], (member_label(archive, member), data))
    return blobs


def _source(folder: Path) -> Path | None:
    """The batch folder or archive to read in ``folder``, or None."""
    for d in (folder / FOLDER, folder):
        if os.path.lexists(d / TEST_BATCH) or os.path.lexists(d / TRAIN_BATCHES[0]):
            return d  # links and special files are found here and refused when read
    return folder / ARCHIVE if os.path.lexists(folder / ARCHIVE) else None


def load_cifar10_from(source: Path, root: Path | None = None) -> DataSplit:
    """CIFAR-10 from a ``cifar-10-batches-py`` folder or the official archive.

    ``root`` is the data folder every file must stay in (default: ``source`` or its folder).
    """
    if source.is_dir():
        if root is not None and source != root:
            check_real_dir(source, f"CIFAR-10: {source}")  # a linked batches folder is refused
        blobs = _read_folder(source, root or source)
    else:
        blobs = _read_archive(source)
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in blobs]
    if missing:
        raise PoisonlabError(f"CIFAR-10: {', '.join(missing)} missing in {source}; use the complete official set")
    classes = _class_names(blobs)
    return DataSplit(_dataset(blobs, TRAIN_BATCHES, classes), _dataset(blobs, (TEST_BATCH,), list(classes)))


def download_cifar10(folder: Path, quiet: bool = False) -> Path:
    """Fetch the official archive into ``folder`` (MD5-checked) and extract it safely; returns the batch folder."""
    archive = folder / ARCHIVE
    if not archive.is_file():
        fetch_url(archive_url(), archive, md5=ARCHIVE_MD5, quiet=quiet)
    safe_extract(archive, folder)
    return folder / FOLDER


def load_cifar10(roots: list[Path], download: bool = False) -> DataSplit:
    """CIFAR-10, 50,000 + 10,000 colour images (N, 3, 32, 32) in [0, 1], from the first folder that has it.

    With ``download=True`` and none found, the archive is fetched into the first
    candidate folder (``<data-dir>/cifar10`` or ``default_data_dir()/cifar10``).
    """
    for folder in roots:
        source = _source(folder)
        if source is not None:
            return load_cifar10_from(source, folder)
    if download and roots:
        return load_cifar10_from(download_cifar10(roots[0]))
    raise not_found("cifar10", f"{FOLDER}/ folder or {ARCHIVE}", roots, " or use --download")


DATASETS.register("cifar10")(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10, 10 classes, 50,000 train + 10,000 test 32x32 colour images (official python batches)",
        subdirs=("cifar10", "cifar-10", "cifar-10-batches-py", ""),
        files=(f"{FOLDER}/{TRAIN_BATCHES[0]} | {TRAIN_BATCHES[0]} | {ARCHIVE}",
               f"{FOLDER}/{TEST_BATCH} | {TEST_BATCH} | {ARCHIVE}"),
        load=load_cifar10,
        downloadable=True,
    )
)
