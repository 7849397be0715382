"""MNIST and Fashion-MNIST from the official IDX files.

MNIST: LeCun, Cortes & Burges, "The MNIST database of handwritten digits".
Fashion-MNIST: Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747.

Each set is four files, gzipped (``.gz``) or raw: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
An IDX file is a big-endian header (magic ``0x00000801`` for labels, ``0x00000803`` for
images, then one uint32 per dimension) followed by the uint8 values.

Checksums are MD5s of the *decompressed* bytes, so re-gzipped copies (other gzip
headers) still verify. Policy, ``verify=None`` (the default used by the registry): a
file whose decompressed size equals the official size is checked against the official
MD5, smaller files (subsets, test fixtures) are only parsed and validated;
``verify=True`` checks every file, ``verify=False`` none. Downloads are always checked.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PoisonlabError
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, first_dir_with
from .safe_files import bytes_md5
from .safe_files import download as fetch_url

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
SIDE = 28
# role -> file name without .gz
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# decompressed sizes of the official files (same for both sets)
OFFICIAL_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * SIDE * SIDE,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * SIDE * SIDE,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


@dataclass(frozen=True)
class IdxSet:
    """One IDX data set: its name, class names and the MD5s of its decompressed files."""

    name: str
    title: str
    classes: tuple[str, ...]
    md5: dict[str, str]


IDX_SETS: dict[str, IdxSet] = {
    "mnist": IdxSet(
        "mnist",
        "MNIST",
        tuple(str(i) for i in range(10)),
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    # computed from Debian's dataset-fashion-mnist; its .gz files, with the gzip name
    # and mtime fields Debian stripped put back, match the published .gz MD5s
    "fashion-mnist": IdxSet(
        "fashion-mnist",
        "Fashion-MNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    ),
}

# Base URLs of the official mirrors; override per set with $POISONLAB_MIRROR_<NAME>
# (e.g. POISONLAB_MIRROR_FASHION_MNIST) or by editing this dict.
MIRRORS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    # the official Fashion-MNIST mirror is an S3 website endpoint, plain HTTP only;
    # every download is MD5-checked, so integrity does not rest on the transport
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def mirror_url(name: str) -> str:
    """Base URL for ``name``: ``$POISONLAB_MIRROR_<NAME>`` if set, else :data:`MIRRORS`."""
    env = os.environ.get("POISONLAB_MIRROR_" + name.upper().replace("-", "_"))
    base = env or MIRRORS[name]
    return base if base.endswith("/") else base + "/"


# ---------------------------------------------------------------- parsing


def decompress(data: bytes, path: Path) -> bytes:
    """Gunzip ``data`` when it is gzip (by magic bytes or a .gz name); raise naming ``path``."""
    if not (data[:2] == b"\x1f\x8b" or path.name.endswith(".gz")):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise PoisonlabError(f"{path}: corrupt gzip data ({e}); delete it and fetch it again") from e


def parse_idx(data: bytes, ndim: int, path: Path) -> np.ndarray:
    """The uint8 array held by an IDX file of ``ndim`` dimensions (1 labels, 3 images)."""
    magic = 0x00000800 | ndim
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PoisonlabError(f"{path}: truncated IDX file ({len(data)} bytes, the header alone needs {header})")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise PoisonlabError(
            f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            "this is not an IDX file of the expected kind"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise PoisonlabError(
            f"{path}: truncated IDX file, header says {'x'.join(map(str, dims))} "
            f"({expected} bytes) but it has {len(data)}; delete it and fetch it again"
        )
    if len(data) > expected:
        raise PoisonlabError(f"{path}: {len(data) - expected} bytes after the IDX data its header describes; the file is corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_md5(raw: bytes, path: Path | str, spec: IdxSet, base: str) -> None:
    actual = bytes_md5(raw)
    if actual == spec.md5[base]:
        return
    other = [s.title for s in IDX_SETS.values() if s is not spec and s.md5.get(base) == actual]
    hint = f" (it is {other[0]}'s file)" if other else ""
    raise PoisonlabError(
        f"{path}: MD5 of the decompressed data is {actual}, expected {spec.md5[base]} for "
        f"{spec.title}{hint}; the file is corrupt or not the official one, replace it"
    )


def read_idx(path: Path, ndim: int, spec: IdxSet | None = None, verify: bool | None = None) -> np.ndarray:
    """Read, decompress, checksum (see module docstring) and parse one IDX file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PoisonlabError(f"cannot read {path}: {e.strerror or e}") from e
    raw = decompress(data, path)
    base = path.name.removesuffix(".gz")
    if spec is not None and base in spec.md5:
        if verify or (verify is None and len(raw) == OFFICIAL_SIZES[base]):
            _check_md5(raw, path, spec, base)
    return parse_idx(raw, ndim, path)


def _pick(folder: Path, base: str) -> Path:
    """The raw file when present (no decompression), else the .gz one."""
    raw = folder / base
    return raw if raw.exists() else folder / f"{base}.gz"


def _load_part(folder: Path, spec: IdxSet, part: str, verify: bool | None) -> Dataset:
    img_path = _pick(folder, FILES[f"{part}_images"])
    lab_path = _pick(folder, FILES[f"{part}_labels"])
    images = read_idx(img_path, 3, spec, verify)
    labels = read_idx(lab_path, 1, spec, verify)
    if images.shape[1:] != (SIDE, SIDE):
        raise PoisonlabError(
            f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, {spec.title} images are {SIDE}x{SIDE}"
        )
    if len(labels) != len(images):
        raise PoisonlabError(f"{lab_path}: {len(labels)} labels but {img_path.name} has {len(images)} images")
    if len(labels) and int(labels.max()) >= len(spec.classes):
        raise PoisonlabError(
            f"{lab_path}: label {int(labels.max())} out of range 0..{len(spec.classes) - 1}; the file is corrupt"
        )
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, list(spec.classes))


def _required() -> list[str]:
    return [f"{base}.gz|{base}" for base in FILES.values()]


def download_idx(name: str, folder: Path, quiet: bool = False) -> None:
    """Fetch the missing ``.gz`` files of set ``name`` into ``folder``, MD5-checked."""
    spec = IDX_SETS[name]
    base_url = mirror_url(name)
    for base in FILES.values():
        if (folder / base).exists() or (folder / f"{base}.gz").exists():
            continue

        def verify(tmp: Path, base: str = base) -> None:
            raw = decompress(tmp.read_bytes(), Path(f"{base}.gz"))
            _check_md5(raw, f"{base}.gz downloaded from {base_url}", spec, base)

        fetch_url(f"{base_url}{base}.gz", folder / f"{base}.gz", verify=verify, quiet=quiet)


def load_idx_split(name: str, roots: list[Path], download: bool = False, verify: bool | None = None) -> DataSplit:
    """Load ``name`` ("mnist" or "fashion-mnist") from the first candidate folder holding all four files.

    With ``download=True`` and no complete folder, the missing files are fetched into the
    first candidate folder (``<data-dir>/<name>`` or ``default_data_dir()/<name>``).
    Images are float32 (N, 1, 28, 28) in [0, 1]; labels int64.
    """
    spec = IDX_SETS[name]
    required = _required()
    try:
        folder = first_dir_with(roots, required, name)
    except PoisonlabError:
        if not download or not roots:
            raise
        folder = roots[0]
        download_idx(name, folder)
        folder = first_dir_with([folder], required, name)
    return DataSplit(_load_part(folder, spec, "train", verify), _load_part(folder, spec, "test", verify))


def load_mnist(roots: list[Path], download: bool = False, verify: bool | None = None) -> DataSplit:
    """MNIST, 60,000 + 10,000 handwritten digits (LeCun et al.)."""
    return load_idx_split("mnist", roots, download, verify)


def load_fashion_mnist(roots: list[Path], download: bool = False, verify: bool | None = None) -> DataSplit:
    """Fashion-MNIST, 60,000 + 10,000 Zalando article images (Xiao et al. 2017)."""
    return load_idx_split("fashion-mnist", roots, download, verify)


_SPEC_FILES = tuple(f"{base}.gz | {base}" for base in FILES.values())

for _name, _description, _subdirs, _load in (
    ("mnist", "MNIST handwritten digits, 28x28 grey, 60,000 train + 10,000 test (official IDX files)",
     ("mnist", "MNIST", "", "MNIST/raw"), load_mnist),
    ("fashion-mnist", "Fashion-MNIST clothing images, 28x28 grey, 60,000 train + 10,000 test (official IDX files)",
     ("fashion-mnist", "fashion_mnist", "", "FashionMNIST/raw"), load_fashion_mnist),
):
    DATASETS.register(_name)(
        DatasetSpec(name=_name, description=_description, subdirs=_subdirs, files=_SPEC_FILES, load=_load,
                    downloadable=True)
    )
