"""CIFAR-10 from the official python batches (Krizhevsky 2009, "Learning Multiple Layers
of Features from Tiny Images").

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` (50,000 training
images), ``test_batch`` (10,000) and ``batches.meta``; each is a protocol-2 pickle of a
dict with ``b"data"`` (uint8, N x 3072: 1024 red, 1024 green, 1024 blue values, rows
first) and ``b"labels"`` (ints 0..9). The folder or the official
``cifar-10-python.tar.gz`` (read in memory, not extracted) is accepted.

Pickles can run code, so every batch is read with :class:`BatchUnpickler`, which
resolves only the few globals a numpy array needs and refuses everything else before
anything is called.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import PoisonlabError
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, not_found
from .safe_files import download as fetch_url
from .safe_files import iter_archive, safe_extract

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


# ---------------------------------------------------------------- restricted unpickling


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes; latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    core = getattr(np, "_core", None)  # numpy >= 2; numpy.core on 1.x
    if core is None or not hasattr(core, "multiarray"):
        import numpy.core.multiarray as multiarray
    else:
        multiarray = core.multiarray
    reconstruct = multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts, lists, bytes, ints and uint8 numpy arrays, nothing else.

    ``find_class`` is the only way a pickle reaches a callable, so refusing every other
    global (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) means nothing else
    can run. Python-2 strings come back as bytes (``encoding="bytes"``), as in the
    official files.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self.allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise PoisonlabError(
                f"{self.source}: refused to unpickle {module}.{name}; a CIFAR-10 batch holds only "
                "numpy arrays, lists and bytes, so this file is not a genuine batch (it may be "
                "malicious): delete it and use the official cifar-10-python.tar.gz"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PoisonlabError(f"{self.source}: refused a persistent id in the pickle; the file is not a genuine batch")


def unpickle_batch(data: bytes, source: str) -> dict[str, Any]:
    """A batch dict (keys decoded to str) read with :class:`BatchUnpickler`."""
    try:
        obj = BatchUnpickler(io.BytesIO(data), source).load()
    except PoisonlabError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside a corrupt pickle is "corrupt"
        raise PoisonlabError(f"{source}: corrupt pickle ({type(e).__name__}: {e}); fetch the official files again") from e
    if not isinstance(obj, dict):
        raise PoisonlabError(f"{source}: expected a dict of arrays, found {type(obj).__name__}; not a CIFAR-10 batch")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


# ---------------------------------------------------------------- batches


def batch_arrays(batch: dict[str, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(data uint8 (N, 3072), labels int64 (N,))`` of one batch."""
    data, labels = batch.get("data"), batch.get("labels")
    if data is None or labels is None:
        raise PoisonlabError(
            f"{source}: no 'data'/'labels' entries (found {', '.join(sorted(batch))}); not a CIFAR-10 batch"
        )
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PoisonlabError(f"{source}: 'data' must be a uint8 array of shape (N, {PIXELS}), found {found}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise PoisonlabError(f"{source}: 'labels' is not a list of integers ({e})") from e
    if y.ndim != 1 or len(y) != len(data):
        raise PoisonlabError(f"{source}: {y.size} labels for {len(data)} images")
    bad = y[(y < 0) | (y >= len(CLASSES))]
    if len(bad):
        raise PoisonlabError(f"{source}: label {int(bad[0])} outside 0..{len(CLASSES) - 1}; the file is corrupt")
    return data, y


def _class_names(blobs: dict[str, tuple[str, bytes]]) -> list[str]:
    if META not in blobs:
        return list(CLASSES)
    source, data = blobs[META]
    names = unpickle_batch(data, source).get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise PoisonlabError(f"{source}: 'label_names' must list {len(CLASSES)} class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _dataset(blobs: dict[str, tuple[str, bytes]], names: tuple[str, ...], classes: list[str]) -> Dataset:
    parts = [batch_arrays(unpickle_batch(blobs[n][1], blobs[n][0]), blobs[n][0]) for n in names]
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return Dataset(x, torch.from_numpy(y), classes)


def _read_folder(folder: Path) -> dict[str, tuple[str, bytes]]:
    blobs = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = folder / name
        if path.is_file():
            blobs[name] = (str(path), path.read_bytes())
    return blobs


def _read_archive(archive: Path) -> dict[str, tuple[str, bytes]]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    blobs = {}
    for member, data in iter_archive(archive, lambda n: n.rsplit("/", 1)[-1] in wanted):
        blobs.setdefault(member.rsplit("/", 1)[-1], (f"{archive}:{member}", data))
    return blobs


def _source(folder: Path) -> Path | None:
    """The batch folder or archive to read in ``folder``, or None."""
    for d in (folder / FOLDER, folder):
        if (d / TEST_BATCH).is_file() or (d / TRAIN_BATCHES[0]).is_file():
            return d
    return folder / ARCHIVE if (folder / ARCHIVE).is_file() else None


def load_cifar10_from(source: Path) -> DataSplit:
    """CIFAR-10 from a ``cifar-10-batches-py`` folder or the official archive."""
    blobs = _read_folder(source) if source.is_dir() else _read_archive(source)
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
            return load_cifar10_from(source)
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
