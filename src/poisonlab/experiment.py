"""One experiment of a step family, end to end, from Python: :func:`run_experiment`.

The work is done by the step pipeline (:mod:`poisonlab.pipeline`): data -> clean reference ->
poison -> victim(s) -> measure -> defenses -> run folder and index row; the family is the one
the config's attack declares (:mod:`poisonlab.families`; BadNets: ``backdoor``). The clean
reference and the victim are trained the same way from the same seed on the same clean
training rows (the validation split is carved first); the victim's training set also holds
the attack's poison rows.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attacks import AttackTestSet
from .config import ExperimentConfig
from .data.base import Dataset, DataSplit
from .measures.backdoor import BackdoorMeasure
from .pipeline import RunOutcome, TrainedModel, experiment_hash  # noqa: F401 (re-exported)
from .pipeline.extra_traffic import trigger_label  # noqa: F401 (re-exported)


def run_experiment(cfg: ExperimentConfig, quiet: bool = False, data: DataSplit | None = None) -> RunOutcome:
    """Run one configured experiment and write its run folder and index row.

    ``data`` (e.g. :func:`poisonlab.data.from_arrays`) replaces loading ``cfg.data``.

    >>> from poisonlab.config import load_config
    >>> cfg = load_config(None, ["train.epochs=1", "output.dir=/tmp/pl-doctest", "output.plots=false",
    ...                          "attack={name: badnets, p: 0.1}"])
    >>> run_experiment(cfg, quiet=True).metrics["attack"]["n_poison"]
    121
    """
    from .families import run_config

    return run_config(cfg, data)


def evaluate(model: nn.Module, test: Dataset, attack_set: AttackTestSet | None, cfg: ExperimentConfig,
             device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Clean and backdoor metrics of one model and its predictions (:mod:`poisonlab.measures.backdoor`)."""
    return BackdoorMeasure().measure(model, test, attack_set, cfg.train.eval_batch_size, device, name)
