"""What the steps of one experiment share: the :class:`Context` they read and fill in order.

load data -> carve validation -> fit the clean reference -> poison (the attack may read the
clean reference as its surrogate) -> fit the victim(s) -> measure -> defend -> write. Each
step is a small function of the context (:mod:`poisonlab.pipeline.steps`); a family differs
only in its attack and its measure (:mod:`poisonlab.families`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..data.base import Dataset, DataSplit
from ..store import RunFolder
from ..train import TrainResult


@dataclass
class TrainedModel:
    """A trained model with how it was trained (``cached``: loaded from the baseline cache)."""

    model: nn.Module
    result: TrainResult
    cached: bool = False


@dataclass
class Victim:
    """A model trained on poisoned data: the main victim, or one an optional step adds."""

    key: str
    """Where its metrics go: ``victim`` (the main victim) or the step's key (``pruning_aware``)."""
    label: str
    """Its name in tables (``BadNet``, ``pruning-aware BadNet``)."""
    trained: TrainedModel
    metrics: dict[str, Any] = field(default_factory=dict)
    preds: dict[str, torch.Tensor] = field(default_factory=dict)
    filterable: bool = False
    """Whether filtering defenses may drop its training rows and retrain it (the main victim)."""
    weights: str | None = None
    """File name of its weights in the run folder (None: written elsewhere or not at all)."""


@dataclass
class Reference:
    """What an attack may read while poisoning: the clean model (its surrogate), the clean
    validation split, the device, and the test rows a targeted attack picks its targets from
    (the attacker names the inputs it wants misclassified; it never sees their use in a
    measure). Attacks that need no surrogate ignore it."""

    model: nn.Module
    val: Dataset | None
    device: torch.device
    seed: int
    test: Dataset | None = None


@dataclass
class Context:
    """The state of one experiment, filled step by step."""

    cfg: ExperimentConfig
    family: Any
    device: torch.device
    start: float
    times: dict[str, float] = field(default_factory=dict)
    attack: Any = None
    defenses: list[tuple[str, Any]] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)
    """The optional steps this config switches on (:mod:`poisonlab.pipeline.extras`)."""
    given: DataSplit | None = None
    """Data passed from Python instead of being loaded by name."""
    split: DataSplit | None = None
    """The data as loaded; released once the splits are carved (``provenance`` keeps its digests)."""
    provenance: dict[str, str] = field(default_factory=dict)
    train: Dataset | None = None
    val: Dataset | None = None
    test: Dataset | None = None
    state: dict[str, Any] = field(default_factory=dict)
    """Per optional step: what it keeps between its stages (e.g. the transfer task)."""
    baseline_key_extra: dict[str, Any] = field(default_factory=dict)
    clean: TrainedModel | None = None
    clean_preds: dict[str, torch.Tensor] = field(default_factory=dict)
    work: Any = None
    """What the main cell's steps share (:class:`~poisonlab.pipeline.cells.CellWork`)."""
    cell: Any = None
    """The main cell (:class:`~poisonlab.pipeline.cells.Cell`): its poison, victim and measure."""
    poison: Any = None
    evaluation: Any = None
    """How the attack is measured on test data (for backdoors: an AttackTestSet)."""
    victims: list[Victim] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)
    folder: RunFolder | None = None

    @property
    def victim(self) -> Victim | None:
        """The main victim (trained on the attack's poisoned data), if any."""
        return next((v for v in self.victims if v.key == "victim"), None)


@dataclass
class RunOutcome:
    """What a run produced: its folder, metrics and the per-class (seed) table."""

    run_id: str
    path: Path
    metrics: dict[str, Any]
    table: list[dict[str, str]]
    extra_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
