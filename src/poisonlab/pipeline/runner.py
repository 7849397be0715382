"""One experiment of a step family, end to end: prepare -> load -> (inside the run folder) the
steps of :mod:`poisonlab.pipeline.steps` -> metrics, tables, weights, plots -> index row."""
from __future__ import annotations

import time
from typing import Any

from ..config import ExperimentConfig, config_hash
from ..data.base import DataSplit
from ..run_outputs import summarize, write_outputs
from . import steps
from .context import Context, RunOutcome
from .fit import device_of
from .frame import Frame, resources, run_framed


def experiment_hash(resolved: dict[str, Any], family: str) -> str:
    """Hash of what determines the results: the config less where files are read from and
    written to, the family that runs it and the digest of ``model.weights``."""
    what = {k: v for k, v in resolved.items() if k != "output"}
    what["data"] = {k: v for k, v in resolved["data"].items() if k != "dir"}
    what["family"] = family
    weights = (resolved.get("model") or {}).get("weights")
    if weights:  # the same path with other weights in it is another experiment
        from ..models.pretrained import weights_digest

        what["model_weights_digest"] = weights_digest(weights)
    return config_hash(what)


def run_steps(cfg: ExperimentConfig, family: Any, data: DataSplit | None = None) -> RunOutcome:
    """Run ``cfg`` through the steps of ``family`` in the shared frame (:mod:`.frame`): checks and
    loading first, then the steps inside the run folder, then metrics, tables, weights, plots and
    the index row. ``data`` (a :class:`~poisonlab.data.base.DataSplit` from Python) replaces loading
    ``cfg.data``."""
    ctx = Context(cfg=cfg, family=family, device=device_of(cfg.device), start=time.perf_counter(), given=data)
    frame = Frame(cfg.output.dir, cfg.name, cfg.seed, cfg.data.name, cfg.model.name,
                  (cfg.attack or {}).get("name", "none"))

    def config_hash() -> str:
        ctx.resolved = cfg.to_dict()
        ctx.config_hash = experiment_hash(ctx.resolved, family.name)
        return ctx.config_hash

    folder, metrics, table = run_framed(frame, ctx, (steps.prepare, steps.load), steps.STEPS, config_hash, _finish)
    return RunOutcome(folder.run_id, folder.path, metrics, table)


def _finish(ctx: Context, folder: Any, chash: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    resources(ctx.metrics, ctx.times)
    victim = ctx.victim
    table = write_outputs(folder, ctx.cfg, ctx.resolved, ctx.metrics, ctx.test, ctx.evaluation, ctx.clean.model,
                          victim.trained.model if victim else None, victim.preds if victim else {},
                          [v for v in ctx.victims if v.key != "victim"])
    return ctx.metrics, summarize(ctx.metrics), table
