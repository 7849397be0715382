"""Fine-Pruning's configuration, result types and fine-tuning step (Liu, Dolan-Gavitt, Garg,
RAID 2018, arXiv 1805.12185): the ``defense:`` keys and their checks, the pruning curve's
result (Sec. 3.1, Fig. 4), a defense's outcome, and fine-tuning on clean validation data
(Sec. 3.3). The curve and the defense entry points are in :mod:`poisonlab.defenses.pruning`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..checks import MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_LR, need_int, need_number
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from ..report import to_csv
from ..train import TrainConfig, TrainResult, train_model
from .pruning_mask import ChannelMask, LayerKind, activation_point, resolve_layer


# -- the pruning curve's result ---------------------------------------------------------
@dataclass
class PruningResult:
    """The pruning curve of one layer and the stop the validation data chose."""

    layer: str
    point: str
    channels: int
    order: list[int]
    means: list[float]
    rows: list[dict[str, Any]]
    n_pruned: int
    base_val_acc: float
    max_drop: float
    kind: LayerKind = "conv"

    @property
    def fraction_pruned(self) -> float:
        return self.n_pruned / self.channels

    @property
    def pruned_channels(self) -> list[int]:
        """The channels the stop rule prunes (in pruning order)."""
        return self.order[:self.n_pruned]

    @property
    def chosen_row(self) -> dict[str, Any]:
        return next(r for r in self.rows if r["n_pruned"] == self.n_pruned)

    def apply(self, model: nn.Module) -> ChannelMask:
        """Attach the chosen mask to ``model`` (the model the curve was measured on, or a copy)."""
        mask = ChannelMask(model, self.layer, self.point, self.kind)
        mask.set(self.pruned_channels)
        return mask

    def to_csv(self) -> str:
        return to_csv(self.rows)

    def write_csv(self, path: str | Path) -> None:
        """The per-step table (n_pruned, fraction_pruned, val_acc, clean_acc, attack_success)."""
        Path(path).write_text(self.to_csv())

    def summary(self) -> dict[str, Any]:
        row = self.chosen_row
        return {"layer": self.layer, "point": self.point, "channels": self.channels, "n_pruned": self.n_pruned,
                "fraction_pruned": self.fraction_pruned, "base_val_acc": self.base_val_acc,
                "max_drop": self.max_drop, "val_acc": row["val_acc"], "clean_acc": row["clean_acc"],
                "attack_success": row["attack_success"]}


# -- fine-tuning -----------------------------------------------------------------------
def fine_tune(model: nn.Module, val: Dataset, cfg: TrainConfig, seed: int = 0,
              device: torch.device | str = "cpu") -> TrainResult:
    """Fine-tune ``model`` in place on clean validation data (Liu et al. 2018, Sec. 3.3).

    Masks attached to the model stay in force: a pruned channel is zero in every forward
    pass and passes no gradient, so it stays pruned.
    """
    if val is None or len(val) == 0:
        raise PoisonlabError("fine-tuning needs a clean validation split; set data.val_fraction > 0")
    return train_model(model, val, cfg, seed=seed, device=device, desc="fine-tune")


# -- the defense ------------------------------------------------------------------------
@dataclass
class FinePruningConfig:
    """``defense:`` keys of pruning, fine-tuning and fine-pruning.

    ``label`` names this entry in tables and files (default: the defense's name), so that one
    defense can be listed twice with different settings. ``layer: null`` is the model's last conv layer; ``mask_at`` overrides the activation
    point; ``step`` is channels (int) or a share of the layer (float) per curve step.
    Fine-tuning uses SGD with a constant small learning rate on the validation split.
    """

    name: str = "fine-pruning"
    label: str | None = None
    layer: str | None = None
    mask_at: str | None = None
    max_drop: float = 0.04
    step: int | float = 1
    full_curve: bool = True
    fine_tune_epochs: int = 10
    fine_tune_lr: float = 0.01
    fine_tune_optimizer: Literal["sgd", "adam"] = "sgd"
    fine_tune_momentum: float = 0.9
    fine_tune_weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 2048

    def validate(self, model: nn.Module | None = None) -> None:
        """Range checks; with ``model``, also that ``layer`` and ``mask_at`` exist."""
        check_label(self.label)
        check_max_drop(self.max_drop)
        check_step(self.step)
        need_int(self.fine_tune_epochs, "defense.fine_tune_epochs", 1, MAX_EPOCHS)
        need_number(self.fine_tune_lr, "defense.fine_tune_lr", 0, MAX_LR, low_open=True)
        need_number(self.fine_tune_momentum, "defense.fine_tune_momentum", 0, 1, high_open=True)
        need_number(self.fine_tune_weight_decay, "defense.fine_tune_weight_decay", 0, 1)
        need_int(self.batch_size, "defense.batch_size", 1, MAX_BATCH)
        need_int(self.eval_batch_size, "defense.eval_batch_size", 1, MAX_BATCH)
        self.fine_tune_config().validate("defense.fine_tune")
        if model is not None:
            layer = resolve_layer(model, self.layer)
            activation_point(model, layer, self.mask_at)

    def fine_tune_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.fine_tune_epochs, batch_size=self.batch_size, optimizer=self.fine_tune_optimizer,
                           lr=self.fine_tune_lr, momentum=self.fine_tune_momentum,
                           weight_decay=self.fine_tune_weight_decay, schedule="constant",
                           eval_batch_size=self.eval_batch_size)


def check_label(label: str | None) -> None:
    """One-line error unless ``label`` is null or a short name of letters, digits, ``-``, ``_``, ``.``."""
    import re

    if label is not None and not (isinstance(label, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", label)):
        raise PoisonlabError(f"defense.label must be 1-40 letters, digits, '-', '_' or '.', got {shown(label)} "
                             f"(it names the table row and the curve files)")


def check_max_drop(max_drop: float, where: str = "defense.max_drop") -> None:
    """One-line error unless ``max_drop`` is a number in [0, 1)."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 1:
        raise PoisonlabError(f"{where} must be in [0, 1) (a drop in validation accuracy, 0.04 = 4 points), "
                             f"got {shown(max_drop)}")


def check_step(step: int | float, where: str = "defense.step") -> None:
    """One-line error unless ``step`` is an int in 1..1000000 or a float in (0, 1]."""
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise PoisonlabError(f"{where} must be a number of channels or a fraction, got {shown(step)}")
    if isinstance(step, int) and step < 1:
        raise PoisonlabError(f"{where} must be >= 1 channel, got {step}")
    if isinstance(step, int) and step > MAX_COUNT:
        raise PoisonlabError(f"{where} must be at most {MAX_COUNT} channels (1..{MAX_COUNT}), got {shown(step)}")
    if isinstance(step, float) and not 0 < step <= 1:
        raise PoisonlabError(f"{where} as a fraction of the layer must be in (0, 1], got {step}")


@dataclass
class DefenseOutcome:
    """A defended copy of the model and what the defense did."""

    model: nn.Module
    mask: ChannelMask | None = None
    curve: PruningResult | None = None
    fine_tune: TrainResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.curve.summary()) if self.curve else {}
        if self.fine_tune is not None:
            out["fine_tune_epochs"] = len(self.fine_tune.history)
            last = self.fine_tune.history[-1] if self.fine_tune.history else {}
            out["fine_tune_loss"] = last.get("loss")
        return out | self.extra
