"""Hostile files for the hostile-input tests, built small on disk: bombs, crafted pickles,
headers that lie, and the loader calls that read them in a capped child (tests/hostile.py)."""
from __future__ import annotations

import struct
import tarfile
import zlib
from pathlib import Path

from hostile import run_python

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MIB = 1 << 20
LOADERS = {  # loader call on one folder only: nothing else on the machine can answer
    "mnist": "from poisonlab.data import idx; idx.load_mnist([Path({d!r})])",
    "cifar10": "from poisonlab.data import cifar10; cifar10.load_cifar10([Path({d!r})])",
    "gtsrb": "from poisonlab.data import gtsrb; gtsrb.load_gtsrb([Path({d!r})])",
    "imdb": "from poisonlab.data import imdb; imdb.load_imdb([Path({d!r})])",
    "adult": "from poisonlab.data import adult; adult.load_adult([Path({d!r})])",
}


def load(name: str, folder: Path, **kwargs):
    return run_python("from pathlib import Path\n" + LOADERS[name].format(d=str(folder)), timeout=60, **kwargs)


# ---------------------------------------------------------------- crafted files


def gzip_bomb(path: Path, prefix: bytes, zeros: int) -> Path:
    """A gzip file of ``prefix`` + ``zeros`` zero bytes, written as one repeated deflate block
    (about 1 KiB per MiB), so neither the test nor the disk ever holds the inflated data."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MIB)
    crc = zlib.crc32(prefix)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        f.write(c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH))
        block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
        for _ in range(zeros // MIB):
            f.write(block)
            crc = zlib.crc32(chunk, crc)
        f.write(c.flush())
        f.write(struct.pack("<II", crc, (len(prefix) + zeros) & 0xFFFFFFFF))
    assert path.stat().st_size < zeros // 500 + 4096
    return path


def idx_header(*dims: int) -> bytes:
    return struct.pack(">I", 0x800 | len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _py2(b: bytes) -> bytes:
    """A Python 2 ``str`` opcode, as the official (cPickle) batches write strings."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def array_ops(shape: tuple[int, ...], raw: bytes, code: bytes = b"u1", flags: int = 0, elsize: int = -1) -> bytes:
    """Opcodes of a numpy array exactly as numpy pickles one, with every field chosen by the test."""
    dtype = (b"cnumpy\ndtype\n" + _py2(code) + b"\x89\x88\x87R(" + _int(3) + _py2(b"|") + b"NNN"
             + _int(elsize) + _int(-1) + _int(flags) + b"tb")
    shape_ops = b"(" + b"".join(_int(d) for d in shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _py2(b"b") + b"\x87R"
            + b"(" + _int(1) + shape_ops + dtype + b"\x89" + _py2(raw) + b"tb")


def batch_pickle(data_ops: bytes, labels_ops: bytes) -> bytes:
    return b"\x80\x02}(" + _py2(b"data") + data_ops + _py2(b"labels") + labels_ops + b"u."


def png(w: int, h: int) -> bytes:
    """A PNG whose header declares ``w`` x ``h`` RGB pixels, with almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


def ppm(w: int, h: int) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + bytes(64)


def tar_member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def patch_zip_sizes(path: Path, file_size: int) -> None:
    """Rewrite the uncompressed size of every member in both the local and the central headers."""
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        while at >= 0:
            data[at + offset: at + offset + 4] = struct.pack("<I", file_size)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


N = 4  # images per tiny CIFAR-10 batch
GTSRB_IMAGE = "GTSRB/Final_Training/Images/00001/00001_00000.ppm"


class _Zeros:
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)
