"""The frame every family's run shares: the run store is checked before anything is loaded,
checks run before any training, the steps run inside a run folder written under a temporary
name (a failure leaves nothing behind), time and peak memory go into the metrics, and one
index row is recorded at the end."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import __version__
from ..resources import peak_cuda_mb, peak_rss_mb
from ..store import RunFolder, open_run, prepare_root, record_run


@dataclass
class Frame:
    """How one family's run is framed: where it goes, its name and what determines its results."""

    root: str
    name: str
    seed: int
    dataset: str
    model: str
    attack: str


def run_framed(frame: Frame, ctx: Any, before: Iterable[Callable[[Any], None]],
               steps: Iterable[Callable[[Any], None]], config_hash: Callable[[], str],
               finish: Callable[[Any, RunFolder, str], tuple[dict[str, Any], dict[str, Any], Any]]) -> tuple[
                   RunFolder, dict[str, Any], Any]:
    """Run ``before`` (checks, loading: nothing written), then open the run folder and run ``steps``
    (they may write into ``ctx.folder``), then ``finish(ctx, folder, hash) -> (metrics, summary,
    result)`` writes the metrics and tables; the index row is recorded with ``summary``.

    ``ctx`` must have ``start`` (a ``time.perf_counter()`` value) and ``times``.
    """
    prepare_root(frame.root)  # a file, unwritable or damaged store fails before any data or training
    for step in before:
        step(ctx)
    chash = config_hash()
    with open_run(frame.root, frame.name, chash) as folder:
        ctx.folder = folder
        for step in steps:
            step(ctx)
        ctx.times["total_seconds"] = time.perf_counter() - ctx.start
        metrics, summary, result = finish(ctx, folder, chash)
    record_run(frame.root, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": frame.name,
        "dataset": frame.dataset, "model": frame.model, "attack": frame.attack, "config_hash": chash,
        "seed": frame.seed, "version": __version__, "path": str(folder.path.resolve()), "summary": summary,
        "metrics": {k: v for k, v in metrics.items() if k != "rows"},
    })
    return folder, metrics, result


def resources(metrics: dict[str, Any], times: dict[str, float]) -> None:
    """Record the run's times and peak memory (RSS, and CUDA when used) in ``metrics``."""
    metrics["time"] = times
    metrics["peak_memory_mb"] = {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()}
