"""What a result was computed from: digests of the data actually loaded and of poisonlab's code.

A run records them in ``metrics.json`` (``provenance``); a grid reuses a finished cell only
when its provenance equals the current one, and the baseline cache puts them in its key. So
neither ever serves a result computed from other data (another folder, edited files, the
same config pointed elsewhere) or other code (a change, released or not).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .data.base import Dataset, DataSplit


def _update_array(h: Any, a: np.ndarray) -> None:
    if a.dtype == object:  # texts and other per-row metadata of Python objects
        h.update(b"object" + str(a.shape).encode())
        h.update("\0".join(map(str, a.ravel().tolist())).encode("utf-8", "surrogatepass"))
        return
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)


def data_fingerprint(ds: Dataset | None) -> str | None:
    """A digest of a data set's tensors, per-row metadata (e.g. IMDB's texts) and class names."""
    if ds is None:
        return None
    h = hashlib.blake2b(digest_size=20)
    for t in (ds.x, ds.y):
        _update_array(h, t.detach().cpu().numpy())
    for key in sorted(ds.meta):
        h.update(key.encode() + b"\0")
        _update_array(h, np.asarray(ds.meta[key]))
    h.update(json.dumps(list(ds.classes)).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A digest of every poisonlab source file (a code change, released or not, is a new digest)."""
    package = Path(__file__).resolve().parent
    h = hashlib.blake2b(digest_size=20)
    for f in sorted(package.rglob("*.py")):
        h.update(str(f.relative_to(package)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def provenance(split: DataSplit) -> dict[str, str]:
    """``{"code": ..., "data": ...}`` of a run that loaded ``split`` (train and test, as loaded)."""
    h = hashlib.blake2b(digest_size=20)
    for part in (split.train, split.test):
        h.update(str(data_fingerprint(part)).encode())
    return {"code": code_fingerprint(), "data": h.hexdigest()}
