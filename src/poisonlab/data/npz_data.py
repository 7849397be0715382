"""The ``npz`` reader: arrays ``x``, ``y`` (optionally ``x_test``, ``y_test`` and ``classes``) in a numpy .npz.

``x`` (N, F) is tabular, (N, H, W) or (N, C, H, W) images (uint8 0..255 or floats in
[0, 1]); ``y`` integer labels (indices 0..K-1 when ``classes`` names them, else mapped to
their sorted unique values); without ``x_test``/``y_test`` a stratified ``test_fraction``
of the rows drawn with ``split_seed`` is the test set (:func:`.user_data.from_arrays`).
Other arrays in the file are ignored.

Hostile input: nothing is unpickled. Each member's .npy header is parsed with numpy's own
header reader (:func:`numpy.lib.format.read_array_header_1_0` / ``_2_0``) and checked
(plain numeric dtype, or strings for ``classes``; no object or structured dtype; the shape's
byte count, in Python integers, equal to what the member holds and under
``$POISONLAB_MAX_FILE_MB``; all members under ``$POISONLAB_MAX_ARCHIVE_MB``) before any
array is allocated; the data are then read with a bound and viewed with
:func:`numpy.frombuffer`: the same as ``numpy.load(allow_pickle=False)``, without trusting a
header that could change between a check and a second read.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PoisonlabError, did_you_mean, one_line
from .archives import CORRUPT
from .base import DataSplit
from .limits import (
    check_file_size,
    max_archive_bytes,
    max_archive_members,
    max_file_bytes,
    mib,
    read_exactly,
)
from .safe_files import open_regular_file
from .user_data import READERS, ReaderSpec, fraction_option, from_arrays, seed_option

NAME = "npz"
KEYS = ("x", "y", "x_test", "y_test", "classes")
OPTIONS = {"test_fraction": fraction_option(0.2), "split_seed": seed_option()}
MAX_HEADER = 10_000


def _check_dtype(dtype: np.dtype, key: str, label: str) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise PoisonlabError(f"{label}: array '{key}' has dtype {one_line(str(dtype), 80)} (objects or records, "
                             "which would need pickle); store plain numeric arrays")
    allowed = "US" if key == "classes" else "biuf"
    if dtype.kind not in allowed:
        want = "strings (class names)" if key == "classes" else "numbers"
        extra = " (labels must be integer class indices; give their names in a 'classes' array)" \
            if key.startswith("y") and dtype.kind in "USO" else ""
        raise PoisonlabError(f"{label}: array '{key}' has non-numeric dtype {dtype}; it must hold {want}{extra}"
                             if key != "classes" else f"{label}: array 'classes' has dtype {dtype}; it must hold {want}")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, label: str) -> np.ndarray:
    """One .npy member, its header checked before anything is allocated."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
        else:
            raise PoisonlabError(f"{label}: array '{key}' uses .npy format version {version}; only 1.0 and 2.0 "
                                 "(plain arrays) are read")
        _check_dtype(dtype, key, label)
        count = math.prod(int(d) for d in shape)
        nbytes = count * dtype.itemsize
        check_file_size(f"{label}: array '{key}'", nbytes, f"declares shape {tuple(shape)} of {dtype}, that is")
        held = info.file_size - f.tell()
        if nbytes != held:
            raise PoisonlabError(f"{label}: array '{key}' declares shape {tuple(shape)} of {dtype} ({nbytes} bytes) "
                                 f"but holds {held}; the file is corrupt")
        data = read_exactly(f, nbytes, f"{label}: array '{key}'", "array")
        if f.read(1):
            raise PoisonlabError(f"{label}: array '{key}' holds more bytes than its header declares; the file is corrupt")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :data:`KEYS` present in an .npz file (see the module docstring)."""
    label = f"{NAME}: {path}"
    with open_regular_file(path, path.parent, max_bytes=max_archive_bytes(), label=label) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except CORRUPT as e:
            raise PoisonlabError(f"{label}: not an .npz (zip) file ({one_line(str(e), 120)}); "
                                 "save it with numpy.savez") from e
        with zf:
            infos = zf.infolist()
            if len(infos) > max_archive_members():
                raise PoisonlabError(f"{label}: {len(infos)} members; not a genuine .npz file")
            members = {i.filename.removesuffix(".npy"): i for i in infos if i.filename.endswith(".npy")}
            total = sum(members[k].file_size for k in KEYS if k in members)
            if total > max_archive_bytes():
                raise PoisonlabError(f"{label}: its arrays declare {mib(total)} in all, over the "
                                     f"{mib(max_archive_bytes())} archive size cap (raise $POISONLAB_MAX_ARCHIVE_MB)")
            for key in ("x", "y"):
                if key not in members:
                    names = sorted(members)
                    raise PoisonlabError(f"{label}: no array '{key}'{did_you_mean(key, names)}; it holds "
                                         f"{one_line(', '.join(names), 200) or 'no arrays'} (an .npz needs x and y, "
                                         "optionally x_test, y_test and classes)")
            out: dict[str, np.ndarray] = {}
            for key in KEYS:
                if key in members:
                    if members[key].file_size > max_file_bytes():
                        check_file_size(f"{label}: array '{key}'", members[key].file_size, "declares")
                    try:
                        out[key] = _read_member(zf, members[key], key, label)
                    except PoisonlabError:
                        raise
                    except CORRUPT as e:
                        raise PoisonlabError(f"{label}: array '{key}' is corrupt ({one_line(str(e), 160)}); "
                                             "save the file again") from e
    return out


def load_npz(path: Path, options: dict[str, Any]) -> DataSplit:
    """The ``npz`` reader (see the module docstring)."""
    a = read_npz(path)
    if ("x_test" in a) != ("y_test" in a):
        raise PoisonlabError(f"{NAME}: {path}: has {'x_test' if 'x_test' in a else 'y_test'} without "
                             f"{'y_test' if 'x_test' in a else 'x_test'}; give both or neither")
    for key in ("y", "y_test"):
        if key in a and a[key].dtype.kind == "f" and not np.isfinite(a[key]).all():
            raise PoisonlabError(f"{NAME}: {path}: array '{key}' holds NaN or infinite labels")
    if "classes" in a and a["classes"].ndim != 1:
        raise PoisonlabError(f"{NAME}: {path}: array 'classes' must be 1-D (one name per class), "
                             f"got shape {a['classes'].shape}")
    classes = None if "classes" not in a else [str(c) for c in a["classes"].astype(str).tolist()]
    return from_arrays(a["x"], a["y"], a.get("x_test"), a.get("y_test"), classes, options["test_fraction"],
                       options["split_seed"], source=f"{NAME}: {path}")


READERS.register(NAME)(ReaderSpec(NAME, "numpy .npz with x, y (optional x_test, y_test, classes)", OPTIONS, load_npz))
