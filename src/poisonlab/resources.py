"""Wall time and peak memory, recorded in every run's metrics."""
from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated by torch, in MiB (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / (1024 * 1024)


@contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start
