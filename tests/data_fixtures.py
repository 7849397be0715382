"""Tiny user-data fixtures for the bring-your-own-data readers: PNG/JPEG class folders, CSVs, .npz files."""
from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, pixels: np.ndarray | list, mode: str | None = None, fmt: str = "PNG") -> Path:
    """``pixels`` (uint8, H x W or H x W x 3) saved at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(pixels, dtype=np.uint8)
    Image.fromarray(arr, mode or ("L" if arr.ndim == 2 else "RGB")).save(path, format=fmt)
    return path


def class_tree(root: Path, per_class: dict[str, int], size: int = 2, start: int = 0) -> Path:
    """``root/<class>/NN.png``: ``per_class[c]`` gray images each; image k of class i has value 10*i + k + start."""
    for i, (cls, n) in enumerate(sorted(per_class.items())):
        for k in range(n):
            write_image(root / cls / f"{k:02d}.png", np.full((size, size), 10 * i + k + start))
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring ``width`` x ``height`` pixels, then IEND: no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def npy_bytes(descr: str, shape: tuple[int, ...], data: bytes, fortran: bool = False) -> bytes:
    """A version 1.0 .npy file with a hand-written header (it may lie about ``data``)."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    pad = 16 - (10 + len(header) + 1) % 16
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npz_of(path: Path, members: dict[str, bytes]) -> Path:
    """An .npz (zip) whose members ``NAME.npy`` hold the given raw .npy bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(f"{name}.npy", raw)
    return path


def npy_of(a: np.ndarray) -> bytes:
    """The .npy bytes numpy writes for ``a``."""
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype.hasobject)
    return buf.getvalue()
