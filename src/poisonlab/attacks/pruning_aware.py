"""The pruning-aware attack (Liu, Dolan-Gavitt, Garg, RAID 2018, arXiv 1805.12185, Sec. 4).

An attacker who expects the Fine-Pruning defense hides the backdoor in the channels that
are *active* on clean data, and leaves decoy channels for the defender to prune:

(a) train the network on clean data;
(b) prune the target layer's channels that are dormant on clean data, in increasing mean
    activation order, until the validation accuracy drops by ``max_drop`` (``prune:
    val-drop``) or a fixed share of the layer (``prune: fraction``);
(c) train the pruned network on the poisoned data (BadNets): the backdoor can only live in
    the channels left;
(d) re-insert the pruned channels and lower their biases so they stay dormant on clean
    inputs: the defender's pruning removes these decoys first and spares the backdoor.

The poisoning itself is BadNets, so this is a training procedure, not a registered
:class:`~poisonlab.attacks.base.Attack`. An experiment runner calls it in place of the
victim's plain training::

    attack = build_attack(cfg.attack)                       # BadNets
    poison = attack.poison(train, rng)
    model, info = pruning_aware_backdoor(
        lambda: build_model(cfg.model.name, shape, classes, cfg.model.options),
        train, poison.dataset, val, layer=None,
        cfg=PruningAwareConfig(train=cfg.train), seed=cfg.seed, device=device)
    # evaluate `model` like the BadNet (clean test set, attack.evaluation_set(test)),
    # then run DEFENSES.get("fine-pruning").run(model, defense_cfg, val, ...) on it.

Where channels are pruned and re-inserted follows
:func:`poisonlab.defenses.pruning.activation_point`; biases are lowered at
:func:`~poisonlab.defenses.pruning.bias_site` (the batch norm after the conv, else the conv's
bias), which shifts a channel's pre-activation additively in eval mode.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..data.base import Dataset
from ..defenses.pruning import (
    ChannelMask,
    activation_point,
    bias_site,
    channel_stats,
    check_max_drop,
    check_step,
    pruning_curve,
    resolve_layer,
)
from ..checks import MAX_BATCH, is_number, is_whole, need_int, need_number
from ..errors import PoisonlabError, shown
from ..models.layers import get_layer
from ..train import TrainConfig, seed_everything, train_model


@dataclass
class PruningAwareConfig:
    """Settings of the pruning-aware attack (see module docstring).

    ``retrain`` trains step (c) (``None``: same as ``train``); ``bias_margin`` is how far
    below zero a re-inserted channel's largest clean pre-activation is pushed.
    """

    layer: str | None = None
    prune: Literal["val-drop", "fraction"] = "val-drop"
    max_drop: float = 0.04
    fraction: float = 0.5
    step: int | float = 1
    mask_at: str | None = None
    bias_margin: float = 0.1
    max_bias_rounds: int = 10
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: TrainConfig | None = None
    eval_batch_size: int = 2048

    def validate(self) -> None:
        if self.prune not in ("val-drop", "fraction"):
            raise PoisonlabError(f"pruning-aware prune must be 'val-drop' or 'fraction', got {shown(self.prune)}")
        check_max_drop(self.max_drop, "pruning-aware max_drop")
        check_step(self.step, "pruning-aware step")
        if not (is_number(self.fraction) and 0 < self.fraction <= 1):
            raise PoisonlabError(f"pruning-aware fraction must be in (0, 1], got {shown(self.fraction)}")
        if is_number(self.bias_margin) and self.bias_margin < 0:
            raise PoisonlabError(f"pruning-aware bias_margin must be >= 0, got {self.bias_margin}")
        need_number(self.bias_margin, "pruning_aware.bias_margin", 0, 1e6)
        if is_whole(self.max_bias_rounds) and self.max_bias_rounds < 1:
            raise PoisonlabError(f"pruning-aware max_bias_rounds must be >= 1, got {self.max_bias_rounds}")
        need_int(self.max_bias_rounds, "pruning_aware.max_bias_rounds", 1, 1000)
        need_int(self.eval_batch_size, "pruning_aware.eval_batch_size", 1, MAX_BATCH)
        self.train.validate()
        if self.retrain is not None:
            self.retrain.validate("pruning_aware.retrain")


def _choose_dormant(model: nn.Module, layer: str, val: Dataset | None, cfg: PruningAwareConfig,
                    device: torch.device | str) -> tuple[list[int], dict[str, Any]]:
    """Step (b): the channels to prune, by the validation stop rule or a fixed share."""
    if val is None or len(val) == 0:
        raise PoisonlabError("the pruning-aware attack needs a clean validation split to rank channels")
    if cfg.prune == "val-drop":
        curve = pruning_curve(model, layer, val, step=cfg.step, max_drop=cfg.max_drop,
                              batch_size=cfg.eval_batch_size, device=device, mask_at=cfg.mask_at, full_curve=False)
        return curve.pruned_channels, {"curve": curve.rows, "base_val_acc": curve.base_val_acc}
    point = activation_point(model, layer, cfg.mask_at)
    channels = get_layer(model, layer).out_channels  # type: ignore[union-attr]
    means = channel_stats(model, point, val.x, cfg.eval_batch_size, device, channels)[0]
    n = max(1, round(cfg.fraction * channels))
    return torch.argsort(means, stable=True)[:n].tolist(), {}


@torch.no_grad()
def make_dormant(model: nn.Module, layer: str, channels: list[int], clean_x: torch.Tensor, margin: float = 0.1,
                 mask_at: str | None = None, batch_size: int = 2048, device: torch.device | str = "cpu",
                 max_rounds: int = 10) -> dict[int, float]:
    """Step (d): lower the bias of ``channels`` until their activation is 0 on every row of
    ``clean_x`` (model in eval mode); returns the total bias decrease per channel.

    Each round lowers a channel's bias by its largest clean activation plus ``margin``
    (every re-inserted channel is lowered by at least ``margin``, as in the paper); with a
    ReLU after an additive path one round suffices, more are taken if needed.
    """
    layer = resolve_layer(model, layer)
    point = activation_point(model, layer, mask_at)
    width = get_layer(model, layer).out_channels  # type: ignore[union-attr]
    _, bias = bias_site(model, layer)
    idx = torch.tensor(channels, dtype=torch.long)
    total = torch.zeros(len(channels), dtype=torch.float64)
    for r in range(max_rounds):
        peak = channel_stats(model, point, clean_x, batch_size, device, width)[1][idx].double()
        if r and not (peak > 0).any():
            break
        shift = peak.clamp(min=0) + margin if r == 0 else torch.where(peak > 0, peak + margin, 0.0)
        bias.data[idx.to(bias.device)] -= shift.to(bias.device, bias.dtype)
        total += shift
    else:
        peak = channel_stats(model, point, clean_x, batch_size, device, width)[1][idx].double()
        if (peak > 0).any():
            raise PoisonlabError(f"could not make {int((peak > 0).sum())} re-inserted channel(s) of '{layer}' dormant "
                                 f"in {max_rounds} rounds; raise bias_margin or max_bias_rounds")
    return dict(zip(channels, total.tolist()))


def pruning_aware_backdoor(model_builder: Callable[[], nn.Module], clean_train: Dataset, poisoned_train: Dataset,
                           val: Dataset | None, layer: str | None = None, cfg: PruningAwareConfig | None = None,
                           seed: int = 0, device: torch.device | str = "cpu",
                           clean_model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a backdoored model that survives pruning (Liu et al. 2018, Sec. 4, steps a-d).

    ``clean_model``, when given, is an already trained clean network (e.g. the experiment's
    baseline, trained with ``cfg.train`` on ``clean_train``): it stands in for step (a) and
    is copied, not modified. Returns the model (no hooks attached, eval mode) and ``info``:
    the layer, activation point, pruned (then re-inserted) channels, validation accuracies,
    bias decreases and the training histories.
    """
    cfg = cfg or PruningAwareConfig()
    cfg.validate()
    layer = layer if layer is not None else cfg.layer
    seed_everything(seed)
    if clean_model is not None:
        model = copy.deepcopy(clean_model)
        layer = resolve_layer(model, layer)
        clean_history: list[dict[str, float]] = []
    else:
        model = model_builder()
        layer = resolve_layer(model, layer)
        clean_history = train_model(model, clean_train, cfg.train, seed=seed, device=device, val=val,
                                    desc="clean").history                                                # (a)
    pruned, extra = _choose_dormant(model, layer, val, cfg, device)                                       # (b)
    with ChannelMask(model, layer, cfg.mask_at) as mask:
        mask.set(pruned)
        retrain = cfg.retrain or cfg.train
        poisoned = train_model(model, poisoned_train, retrain, seed=seed + 1, device=device, val=val,
                               desc="poison (pruned)")                                                   # (c)
        point = mask.point
    clean_x = clean_train.x if val is None else torch.cat([clean_train.x, val.x])
    shifts = make_dormant(model, layer, pruned, clean_x, cfg.bias_margin, cfg.mask_at, cfg.eval_batch_size,
                          device, cfg.max_bias_rounds)                                                   # (d)
    model.eval()
    info = {"layer": layer, "point": point, "bias_site": bias_site(model, layer)[0], "pruned": pruned,
            "n_pruned": len(pruned), "fraction_pruned": len(pruned) / get_layer(model, layer).out_channels,
            "bias_shift": shifts, "clean_history": copy.deepcopy(clean_history),
            "poison_history": copy.deepcopy(poisoned.history)} | extra
    return model, info


def pruning_aware_config(raw: dict[str, Any] | None, train: TrainConfig) -> PruningAwareConfig:
    """The validated :class:`PruningAwareConfig` of an experiment's ``pruning_aware:`` section.

    Step (a) trains like the experiment (``train``); ``retrain:`` holds only the keys of
    step (c) that differ from ``train`` (e.g. ``{epochs: 10, lr: 0.01}``).
    """
    from ..config import from_dict

    data = dict(raw or {})
    if "train" in data:
        raise PoisonlabError("pruning_aware.train is the experiment's train: section; set step (c) under "
                             "pruning_aware.retrain")
    retrain = data.pop("retrain", None)
    if retrain is not None and not isinstance(retrain, dict):
        raise PoisonlabError(f"pruning_aware.retrain must be a mapping of train: keys, got {shown(retrain)}")
    cfg = from_dict(PruningAwareConfig, data, "pruning_aware")
    cfg.train = train
    if retrain:
        cfg.retrain = from_dict(TrainConfig, {**dataclasses.asdict(train), **retrain}, "pruning_aware.retrain")
    cfg.validate()
    return cfg
