"""One pipeline for every attack family: a :class:`~poisonlab.pipeline.context.Context` filled by
small steps (:mod:`poisonlab.pipeline.steps`), optional steps switched on by the config
(:mod:`poisonlab.pipeline.extras`), and a runner that writes the run folder
(:mod:`poisonlab.pipeline.runner`)."""
from __future__ import annotations

from .context import Context, Reference, RunOutcome, TrainedModel, Victim
from .extras import EXTRAS
from .runner import experiment_hash, run_steps

__all__ = ["Context", "Reference", "RunOutcome", "TrainedModel", "Victim", "EXTRAS", "experiment_hash", "run_steps"]
