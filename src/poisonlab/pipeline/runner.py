"""One experiment of a step family, end to end: prepare -> load -> (inside the run folder) the
steps of :mod:`poisonlab.pipeline.steps` -> metrics, tables, weights, plots -> index row."""
from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..config import ExperimentConfig, config_hash
from ..data.base import DataSplit
from ..resources import peak_cuda_mb, peak_rss_mb
from ..run_outputs import summarize, write_outputs
from ..store import open_run, prepare_root, record_run
from . import steps
from .context import Context, RunOutcome
from .fit import device_of


def experiment_hash(resolved: dict[str, Any], family: str) -> str:
    """Hash of what determines the results: the config less where files are read from and
    written to, and the family that runs it."""
    what = {k: v for k, v in resolved.items() if k != "output"}
    what["data"] = {k: v for k, v in resolved["data"].items() if k != "dir"}
    what["family"] = family
    return config_hash(what)


def run_steps(cfg: ExperimentConfig, family: Any, data: DataSplit | None = None) -> RunOutcome:
    """Run ``cfg`` through the steps of ``family``; write its run folder and index row.

    ``data`` (a :class:`~poisonlab.data.base.DataSplit` from Python) replaces loading ``cfg.data``.
    """
    ctx = Context(cfg=cfg, family=family, device=device_of(cfg.device), start=time.perf_counter(), given=data)
    steps.prepare(ctx)
    prepare_root(cfg.output.dir)  # a file, unwritable or damaged store fails before any data or training
    steps.load(ctx)
    ctx.resolved = cfg.to_dict()
    ctx.config_hash = experiment_hash(ctx.resolved, family.name)
    with open_run(cfg.output.dir, cfg.name, ctx.config_hash) as folder:
        ctx.folder = folder
        for step in steps.STEPS:
            step(ctx)
        ctx.times["total_seconds"] = time.perf_counter() - ctx.start
        ctx.metrics["time"] = ctx.times
        ctx.metrics["peak_memory_mb"] = {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()}
        victim = ctx.victim
        table = write_outputs(folder, cfg, ctx.resolved, ctx.metrics, ctx.test, ctx.evaluation, ctx.clean.model,
                              victim.trained.model if victim else None, victim.preds if victim else {},
                              [v for v in ctx.victims if v.key != "victim"])
    record_run(cfg.output.dir, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": cfg.name,
        "dataset": cfg.data.name, "model": cfg.model.name, "attack": (cfg.attack or {}).get("name", "none"),
        "config_hash": ctx.config_hash, "seed": cfg.seed, "version": __version__, "path": str(folder.path.resolve()),
        "summary": summarize(ctx.metrics), "metrics": ctx.metrics,
    })
    return RunOutcome(folder.run_id, folder.path, ctx.metrics, table)
