"""MNIST and Fashion-MNIST from the official IDX files.

MNIST: LeCun, Cortes & Burges, "The MNIST database of handwritten digits".
Fashion-MNIST: Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747.

Each set is four files, gzipped (``.gz``) or raw: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
An IDX file is a big-endian header (magic ``0x00000801`` for labels, ``0x00000803`` for
images, then one uint32 per dimension) followed by the uint8 values.

Files are read as regular files inside their data folder (:mod:`.safe_files`); the header
is read first and the size it declares (the product of the dimensions, in Python ints) is
checked against the file and ``$POISONLAB_MAX_FILE_MB`` (:mod:`.limits`) before the body
is read; a gzip stream is inflated in bounded steps and only up to that size.

Checksums are MD5s of the *decompressed* bytes, so re-gzipped copies (other gzip
headers) still verify. Policy, ``verify=None`` (the default used by the registry): a
file whose decompressed size equals the official size is checked against the official
MD5, smaller files (subsets, test fixtures) are only parsed and validated;
``verify=True`` checks every file, ``verify=False`` none. Downloads are always checked.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from ..errors import PoisonlabError, one_line
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, first_dir_with
from .limits import CHUNK, max_file_bytes, mib, read_exactly
from .safe_files import bytes_md5, open_regular_file
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


def _dims_text(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims))


def parse_idx(data: bytes | bytearray, ndim: int, path: Path) -> np.ndarray:
    """The uint8 array held by decompressed IDX bytes of ``ndim`` dimensions (1 labels, 3 images)."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PoisonlabError(f"{path}: truncated IDX file ({len(data)} bytes, the header alone needs {header})")
    dims = _check_header(bytes(data[:header]), ndim, path)
    expected = header + math.prod(dims)  # Python ints: no int64 wrap-around
    _check_length(len(data), expected, dims, path)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_magic(head: bytes, ndim: int, path: Path) -> None:
    magic = 0x00000800 | ndim
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise PoisonlabError(
            f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            "this is not an IDX file of the expected kind"
        )


def _check_header(head: bytes, ndim: int, path: Path) -> tuple[int, ...]:
    """The dimensions in a complete IDX header, after the magic number check."""
    _check_magic(head, ndim, path)
    return tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))


def _length_error(have: int, expected: int, dims: tuple[int, ...], path: Path) -> PoisonlabError:
    return PoisonlabError(f"{path}: truncated IDX file, header says {_dims_text(dims)} "
                          f"({expected} bytes) but it has {have}; delete it and fetch it again")


def _check_length(have: int, expected: int, dims: tuple[int, ...], path: Path) -> None:
    if have < expected:
        raise _length_error(have, expected, dims, path)
    if have > expected:
        raise PoisonlabError(f"{path}: {have - expected} bytes after the IDX data its header describes; the file is corrupt")


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n and (block := stream.read(n - got)):
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _read_stream(stream: BinaryIO, ndim: int | None, path: Path, raw_size: int | None,
                 check: Callable[[tuple[int, ...]], None] | None) -> bytearray:
    """The whole IDX file from ``stream``, header first: the body is read only once the header's
    size (product of dims, in Python ints) is known to be under the cap and to match the file."""
    first = _read_upto(stream, 4)
    if ndim is None and len(first) == 4:  # magic 0x000008NN: unsigned bytes, NN dimensions
        if first[:3] != b"\x00\x00\x08" or not 1 <= first[3] <= 4:
            raise PoisonlabError(f"{path}: not an IDX file of unsigned bytes (magic number 0x{first.hex()}); "
                                 "replace it with the official file")
        ndim = first[3]
    ndim = ndim or 1
    header = 4 + 4 * ndim
    if len(first) == 4:
        _check_magic(first, ndim, path)  # the magic number is checked before the length
    head = first + _read_upto(stream, header - len(first))
    if len(head) < header:
        raise PoisonlabError(f"{path}: truncated IDX file ({len(head)} bytes, the header alone needs {header})")
    dims = _check_header(head, ndim, path)
    expected = header + math.prod(dims)
    if expected > max_file_bytes():
        raise PoisonlabError(f"{path}: IDX header declares {_dims_text(dims)} = {expected} bytes, over the "
                             f"{mib(max_file_bytes())} size cap; the file is corrupt or malicious "
                             "(raise $POISONLAB_MAX_FILE_MB if it is genuine)")
    if raw_size is not None:
        _check_length(raw_size, expected, dims, path)  # an uncompressed file: its size is known
    if check is not None:
        check(dims)

    def short(got: int) -> PoisonlabError:
        return _length_error(header + got, expected, dims, path)

    out = bytearray(head)
    out += read_exactly(stream, expected - header, str(path), "IDX file", short)
    extra = len(_read_upto(stream, CHUNK))
    if extra:
        raise PoisonlabError(f"{path}: {extra}{'+' if extra == CHUNK else ''} bytes after the IDX data its header "
                             "describes; the file is corrupt")
    return out


def read_idx_bytes(path: Path, ndim: int | None = None, root: Path | None = None,
                   check: Callable[[tuple[int, ...]], None] | None = None) -> bytearray:
    """The decompressed bytes of one IDX file (raw or gzip, by magic bytes or a .gz name), bounded.

    ``ndim`` is the expected number of dimensions (None: read from the magic number);
    ``root`` the data folder the file must be a regular file in; ``check(dims)`` may refuse
    the shape before the body is read. A gzip stream is inflated only up to the size its
    header declares (plus one chunk to detect trailing data), never further.
    """
    with open_regular_file(path, root, label=str(path)) as f:
        size = os.fstat(f.fileno()).st_size
        magic = f.read(2)
        f.seek(0)
        if not (magic == b"\x1f\x8b" or path.name.endswith(".gz")):
            return _read_stream(f, ndim, path, size, check)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                return _read_stream(gz, ndim, path, None, check)  # type: ignore[arg-type]
        except (OSError, EOFError, zlib.error) as e:
            raise PoisonlabError(f"{path}: corrupt gzip data ({one_line(str(e), 200)}); "
                                 "delete it and fetch it again") from e


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


def read_idx(path: Path, ndim: int, spec: IdxSet | None = None, verify: bool | None = None,
             root: Path | None = None, check: Callable[[tuple[int, ...]], None] | None = None) -> np.ndarray:
    """Read (bounded, see :func:`read_idx_bytes`), checksum (see module docstring) and parse one IDX file."""
    raw = read_idx_bytes(path, ndim, root, check)
    base = path.name.removesuffix(".gz")
    if spec is not None and base in spec.md5:
        if verify or (verify is None and len(raw) == OFFICIAL_SIZES[base]):
            _check_md5(raw, path, spec, base)
    return parse_idx(raw, ndim, path)


def _pick(folder: Path, base: str) -> Path:
    """The raw file when present (no decompression), else the .gz one."""
    raw = folder / base
    return raw if os.path.lexists(raw) else folder / f"{base}.gz"  # a link or FIFO is picked, then refused


def _load_part(folder: Path, spec: IdxSet, part: str, verify: bool | None) -> Dataset:
    img_path = _pick(folder, FILES[f"{part}_images"])
    lab_path = _pick(folder, FILES[f"{part}_labels"])

    def image_side(dims: tuple[int, ...]) -> None:  # refused before the pixels are read
        if dims[1:] != (SIDE, SIDE):
            raise PoisonlabError(f"{img_path}: images are {dims[1]}x{dims[2]}, {spec.title} images are {SIDE}x{SIDE}")

    images = read_idx(img_path, 3, spec, verify, folder, image_side)
    labels = read_idx(lab_path, 1, spec, verify, folder)
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
            raw = read_idx_bytes(tmp, 3 if "images" in base else 1)
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
