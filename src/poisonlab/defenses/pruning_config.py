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

from ..checks import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LR,
    is_number,
    is_whole,
    need_int,
    need_number,
)
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
    """``defense:`` keys of pruning, fine-tuning and fine-pruning (Liu, Dolan-Gavitt, Garg, RAID
    2018), one config for CNNs and MLPs.

    Defaults are the paper's: ``max_drop = 0.04`` (pruning stops before the clean validation
    accuracy falls more than 4 points below the unpruned model's, Sec. 3.1), one channel per
    step, fine-tuning with SGD and a small constant learning rate on the clean validation data
    (Sec. 3.3; ``fine_tune_epochs = 10``, ``fine_tune_lr = 0.01``, momentum 0.9, batch 128).

    ``label`` names this entry in tables and files (default: the defense's name), so that one
    defense can be listed twice with different settings. ``layer_kind``: ``conv`` prunes output
    channels of a Conv2d, ``linear`` hidden units of a Linear layer (every ``nn.Linear`` but the
    output layer), ``auto`` (default) ``conv`` when the model has a Conv2d, else ``linear`` (an
    MLP, as in Jagielski et al. 2021, Sec. 6). ``layer: null`` is the last such layer;
    ``mask_at`` overrides the activation point; ``step`` is channels (int) or a share of the
    layer (float) per curve step. ``fine_tune_epochs: 0`` (fine-pruning only) prunes without
    fine-tuning. ``full_curve: false`` ends the curve at the first step past the stop (the
    stop is the same; only the report's curve is shorter).
    """

    name: str = "fine-pruning"
    label: str | None = None
    layer: str | None = None
    layer_kind: Literal["auto", "conv", "linear"] = "auto"
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

    def validate(self, model: nn.Module | None = None, where: str = "defense") -> None:
        """Range checks; with ``model``, also that ``layer`` and ``mask_at`` exist."""
        check_label(self.label, f"{where}.label")
        if self.layer_kind not in ("auto", "conv", "linear"):
            raise PoisonlabError(f"{where}.layer_kind must be auto, conv or linear, got {shown(self.layer_kind)}")
        check_max_drop(self.max_drop, f"{where}.max_drop")
        check_step(self.step, f"{where}.step")
        low = 0 if self.name == "fine-pruning" else 1  # fine-pruning with 0 epochs: pruning alone
        if not (is_whole(self.fine_tune_epochs) and self.fine_tune_epochs >= low):
            raise PoisonlabError(f"{where}.fine_tune_epochs must be an integer >= {low}"
                                 f"{' (0: prune only)' if low == 0 else ''}, got {shown(self.fine_tune_epochs)}")
        need_int(self.fine_tune_epochs, f"{where}.fine_tune_epochs", low, MAX_EPOCHS)
        if not (is_number(self.fine_tune_lr) and self.fine_tune_lr > 0):
            raise PoisonlabError(f"{where}.fine_tune_lr must be a number > 0, got {shown(self.fine_tune_lr)}")
        need_number(self.fine_tune_lr, f"{where}.fine_tune_lr", 0, MAX_LR, low_open=True)
        need_number(self.fine_tune_momentum, f"{where}.fine_tune_momentum", 0, 1, high_open=True)
        need_number(self.fine_tune_weight_decay, f"{where}.fine_tune_weight_decay", 0, 1)
        need_int(self.batch_size, f"{where}.batch_size", 1, MAX_BATCH)
        need_int(self.eval_batch_size, f"{where}.eval_batch_size", 1, MAX_BATCH)
        if self.fine_tune_epochs >= 1:
            self.fine_tune_config().validate(f"{where}.fine_tune")
        if model is not None:
            self.check_model(model)

    def check_model(self, model: nn.Module) -> None:
        """Fail in one line, before any training, when ``model`` has no layer this defense can
        prune (an experiment calls this on an untrained copy of its victim's learner)."""
        kind = self.kind_for(model)
        layer = resolve_layer(model, self.layer, kind)
        activation_point(model, layer, self.mask_at, kind)

    def kind_for(self, model: nn.Module) -> LayerKind:
        """What is pruned in ``model``: ``layer_kind``, or for ``auto`` conv channels when the model
        has a Conv2d, else hidden units of a Linear layer."""
        if self.layer_kind != "auto":
            return self.layer_kind
        return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "linear"

    def fine_tune_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.fine_tune_epochs, batch_size=self.batch_size, optimizer=self.fine_tune_optimizer,
                           lr=self.fine_tune_lr, momentum=self.fine_tune_momentum,
                           weight_decay=self.fine_tune_weight_decay, schedule="constant",
                           eval_batch_size=self.eval_batch_size)


def check_label(label: str | None, where: str = "defense.label") -> None:
    """One-line error unless ``label`` is null or a short name of letters, digits, ``-``, ``_``,
    ``.`` other than ``none`` (:func:`poisonlab.defenses.registry.check_label`)."""
    from .registry import check_label as check

    check(label, where)


def check_max_drop(max_drop: float, where: str = "defense.max_drop") -> None:
    """One-line error unless ``max_drop`` is a number in [0, 1)."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 1:
        raise PoisonlabError(f"{where} must be in [0, 1) (a drop in validation accuracy, 0.04 = 4 points), "
                             f"got {shown(max_drop)}")


def check_step(step: float, where: str = "defense.step") -> None:
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
    """What every registered defense returns: the defended model (a torch ``nn.Module``, a copy:
    the suspect model is never modified), the rows it removed (filters and robust training),
    the pruning curve, the fine-tuning history and whatever else it reports (``extra``)."""

    model: nn.Module
    mask: ChannelMask | None = None
    curve: PruningResult | None = None
    fine_tune: TrainResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    removed: Any = None
    """Boolean numpy mask of the training rows the defense removed (filters, TRIM, SEVER); else None."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.curve.summary()) if self.curve else {}
        if self.fine_tune is not None:
            out["fine_tune_epochs"] = len(self.fine_tune.history)
            last = self.fine_tune.history[-1] if self.fine_tune.history else {}
            out["fine_tune_loss"] = last.get("loss")
        return out | self.extra
