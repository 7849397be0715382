"""Executors: how a grid's cells are run. A cell is a pure function of its config, so any
executor that calls ``fn(cell)`` somewhere and hands back ``(index, result)`` will do; a
distributed engine plugs in as one more class with a ``run`` method.

* :class:`InProcess` (default): one cell after the other, in this process.
* :class:`LocalPool`: up to ``jobs`` cells at once in worker processes started with
  ``spawn`` (a fresh interpreter each: nothing inherited but the cell's config). Registries
  filled at run time (a family registered from a script) are not in the workers: use
  ``InProcess`` for those. Each cell's torch threads are ``threads`` (default: cores / jobs).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Protocol

from .errors import PoisonlabError

Task = tuple[int, Any]


class Executor(Protocol):
    """Runs ``fn`` on each ``(index, cell)``; yields ``(index, fn(cell))`` as cells finish."""

    def run(self, fn: Callable[[Any], Any], tasks: list[Task]) -> Iterator[tuple[int, Any]]: ...


class InProcess:
    """Every cell in this process, in order."""

    def run(self, fn: Callable[[Any], Any], tasks: list[Task]) -> Iterator[tuple[int, Any]]:
        for i, cell in tasks:
            yield i, fn(cell)


def _init(threads: int) -> None:
    import torch

    from . import progress

    torch.set_num_threads(threads)
    progress.set_enabled(False)


class LocalPool:
    """Up to ``jobs`` cells at once in spawned worker processes (see module docstring)."""

    def __init__(self, jobs: int, threads: int | None = None) -> None:
        if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 256:
            raise PoisonlabError(f"--jobs must be an integer in 1..256, got {jobs!r}")
        self.jobs = jobs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.threads = threads or max(1, cores // jobs)

    def run(self, fn: Callable[[Any], Any], tasks: list[Task]) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(tasks)), mp_context=ctx, initializer=_init,
                                 initargs=(self.threads,)) as pool:
            futures = {pool.submit(fn, cell): i for i, cell in tasks}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


EXECUTORS: dict[str, Callable[..., Executor]] = {"inprocess": lambda jobs=1: InProcess(),
                                                  "pool": lambda jobs=2: LocalPool(jobs)}


def make_executor(name: str, jobs: int = 1) -> Executor:
    """The executor ``name`` (``inprocess`` or ``pool``) for ``jobs`` parallel cells."""
    if name not in EXECUTORS:
        raise PoisonlabError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](jobs)
