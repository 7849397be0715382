"""Run many cells of one experiment (:mod:`poisonlab.pipeline.cells`), serially or on forked
worker processes.

The shared :class:`~poisonlab.pipeline.cells.CellWork` (data, clean predictions, learner) reaches
the workers by ``fork``: copy-on-write, nothing pickled per cell; only each cell's result comes
back. Every cell runs with one torch and one BLAS thread, in the workers as in the serial path
(CPU sums can depend on the thread count), and seeds itself from its key, so a parallel run
returns exactly the serial run's numbers, in the order of the keys.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

import torch
from threadpoolctl import threadpool_limits

from .. import progress
from ..errors import PoisonlabError
from .cells import Cell, CellWork, run_cell

_WORK: tuple[CellWork, Callable[[Cell], Any]] | None = None


def _run(key: tuple) -> Any:
    assert _WORK is not None, "a cell ran outside run_cells"
    work, result = _WORK
    return result(run_cell(work, key))


def _init_worker() -> None:
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy / scikit-learn BLAS too: one thread per cell, workers share the cores
    progress.set_enabled(False)


def run_cells(work: CellWork, keys: list[tuple], result: Callable[[Cell], Any], workers: int = 1,
              desc: str = "cells") -> list[Any]:
    """``result(cell)`` of every cell in ``keys`` (what comes back from a worker: keep it small);
    ``workers > 1`` forks that many processes. Results are in the order of ``keys``."""
    global _WORK
    if workers < 1:
        raise PoisonlabError(f"workers must be >= 1, got {workers}")
    _WORK = (work, result)
    out: dict[tuple, Any] = {}
    try:
        with progress.bar(desc, len(keys), unit="fit") as bar:
            if workers == 1 or len(keys) == 1:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    with threadpool_limits(1):
                        for key in keys:
                            out[key] = _run(key)
                            bar.advance(1)
                finally:
                    torch.set_num_threads(threads)
            else:
                if "fork" not in mp.get_all_start_methods():
                    raise PoisonlabError("parallel cells need the 'fork' start method (Linux, macOS); set workers: 1")
                with ProcessPoolExecutor(max_workers=min(workers, len(keys)), mp_context=mp.get_context("fork"),
                                         initializer=_init_worker) as pool:
                    futures = {pool.submit(_run, key): key for key in keys}
                    for fut in as_completed(futures):
                        out[futures[fut]] = fut.result()
                        bar.advance(1)
    finally:
        _WORK = None
    return [out[key] for key in keys]


def default_workers() -> int:
    """One worker per available CPU core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
