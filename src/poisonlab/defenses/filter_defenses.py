"""Filtering defenses as registered defenses: score the training rows, drop the suspects, retrain.

Spectral Signatures (Tran, Li, Madry 2018) and Activation Clustering (Chen et al. 2018) read
the suspect model's representations (the input of its last linear layer) of its own,
possibly poisoned, training rows, grouped by their training labels. The rows they flag are
removed and the experiment's victim is retrained on the rest the same way it was trained
first; the report gives detection precision / recall / FPR against the known poison mask,
the share removed (overall and of the attack's target class) and the retrained model's
clean accuracy and attack success.

Thresholds: each defense has a paper rule with a fixed parameter (Spectral Signatures'
assumed poison rate ``epsilon``; Activation Clustering's relative-size or silhouette
threshold) and a ``validation`` rule whose threshold is read off the experiment's clean
validation split (see :mod:`.spectral` and :mod:`.activation_clustering`); test data never
decides anything.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset
from ..checks import MAX_BATCH, is_number, need_int, need_number
from ..errors import PoisonlabError, shown
from .activation_clustering import activation_clustering, exclusionary_reclassification
from .filtering import FilterResult, detection_metrics, representations
from .pruning import DefenseOutcome, check_label
from .spectral import spectral_signatures


@dataclass
class FilterContext:
    """What a filtering defense needs beyond the model: the poisoned training set, its poison
    mask (for the report only) and how the experiment retrains its victim."""

    train: Dataset
    poison_mask: torch.Tensor
    retrain: Callable[[Dataset, str], nn.Module]
    target: int | None = None
    val: Dataset | None = None
    """The clean validation split (the ``validation`` rules read it; nothing else does)."""


MAX_DIMS = 10_000


@dataclass
class SpectralConfig:
    """``defenses:`` keys of Spectral Signatures. ``rule: budget`` (the paper): ``epsilon`` is
    the poison rate the defender assumes and ``removal_factor * epsilon`` of each class (by
    training label) is removed. ``rule: validation``: scores are centred at each class's clean
    validation mean and rows scoring above what ``false_removal_rate`` of the class's
    validation rows score are removed (no poison rate assumed)."""

    name: str = "spectral-signatures"
    label: str | None = None
    rule: Literal["budget", "validation"] = "budget"
    epsilon: float = 0.1
    removal_factor: float = 1.5
    false_removal_rate: float = 0.05
    layer: str | None = "auto"
    batch_size: int = 1024

    def validate(self) -> None:
        check_label(self.label)
        need_number(self.false_removal_rate, "defense.false_removal_rate", 0, 1, high_open=True,
                    what="the share of clean validation rows the threshold may remove")
        need_number(self.epsilon, "defense.epsilon", 0, 1, low_open=True, high_open=True,
                    what="the assumed poison rate")
        if is_number(self.removal_factor) and not self.removal_factor > 0:
            raise PoisonlabError(f"defense.removal_factor must be > 0, got {self.removal_factor}")
        need_number(self.removal_factor, "defense.removal_factor", 0, 100, low_open=True)
        need_int(self.batch_size, "defense.batch_size", 1, MAX_BATCH)


@dataclass
class ActivationClusteringConfig:
    """``defenses:`` keys of Activation Clustering (per class: reduce to ``dims``, 2-means,
    flag the smaller cluster by relative size or silhouette)."""

    name: str = "activation-clustering"
    label: str | None = None
    dims: int = 10
    reduce: Literal["ica", "pca"] = "ica"
    rule: Literal["size", "silhouette", "validation"] = "size"
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10
    validation_ratio: float = 0.5
    exclusionary: bool = False
    """Check every flagged cluster by exclusionary reclassification (Chen et al. 2018, Sec. 4.3):
    retrain without it, classify it; a cluster the retrained model gives its own label (more
    than ``exclusionary_threshold`` times the most frequent other class) is kept as legitimate.
    Costs one retraining per flagged cluster."""
    exclusionary_threshold: float = 1.0
    layer: str | None = "auto"
    batch_size: int = 1024

    def validate(self) -> None:
        check_label(self.label)
        if is_number(self.dims) and self.dims < 1:
            raise PoisonlabError(f"defense.dims must be >= 1, got {self.dims}")
        need_int(self.dims, "defense.dims", 1, MAX_DIMS, "dimensions kept per class")
        need_number(self.size_threshold, "defense.size_threshold", 0, 1, low_open=True, high_open=True)
        need_number(self.silhouette_threshold, "defense.silhouette_threshold", -1, 1)
        if not (is_number(self.exclusionary_threshold) and self.exclusionary_threshold >= 0):
            raise PoisonlabError(f"defense.exclusionary_threshold must be >= 0 (the own-label count must exceed this "
                                 f"times the largest other-class count), got {shown(self.exclusionary_threshold)}")
        need_number(self.exclusionary_threshold, "defense.exclusionary_threshold", 0, 1e6)
        need_number(self.validation_ratio, "defense.validation_ratio", 0, 1, low_open=True,
                    what="a cluster is flagged when its share of validation rows is below this times its share "
                         "of training rows")
        need_int(self.batch_size, "defense.batch_size", 1, MAX_BATCH)


Decide = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"], FilterResult]


def _filter(model: nn.Module, ctx: FilterContext, layer: str | None, batch_size: int, decide: Decide, name: str,
            needs_val: bool, check: Callable[[FilterResult, str], None] | None = None) -> DefenseOutcome:
    reprs = representations(model.eval(), ctx.train.x, layer, batch_size)
    labels = ctx.train.y.numpy()
    val_reprs = val_labels = None
    if needs_val:
        if ctx.val is None or len(ctx.val) == 0:
            raise PoisonlabError(f"defense '{name}' with rule 'validation' reads the clean validation split; "
                                 f"set data.val_fraction > 0")
        val_reprs = representations(model, ctx.val.x, layer, batch_size)
        val_labels = ctx.val.y.numpy()
    result = decide(reprs, labels, val_reprs, val_labels)
    if check is not None:
        check(result, name)
    keep = torch.from_numpy(result.keep)
    # nothing removed: retraining on the same rows would give the same model (training is seeded)
    retrained = ctx.retrain(ctx.train.subset(keep.nonzero().flatten()), name) if result.n_removed else model
    m = detection_metrics(result.remove, ctx.poison_mask.numpy(), labels, ctx.train.num_classes)
    per_class = {c: {k: v for k, v in info.items() if k != "direction"}  # drop the per-class singular vectors
                 for c, info in result.details.get("classes", {}).items()}
    extra: dict[str, Any] = {"detection": m, "n_removed": result.n_removed, "retrained": bool(result.n_removed),
                             "removed_share": result.n_removed / len(labels), "per_class": per_class}
    if ctx.target is not None:
        extra["target_class_clean_removed"] = m["clean_removed_share_per_class"][ctx.target]
    return DefenseOutcome(retrained, extra=extra)


def spectral_defense(model: nn.Module, cfg: SpectralConfig, ctx: FilterContext, seed: int = 0,
                     device: torch.device | str = "cpu") -> DefenseOutcome:
    """Spectral Signatures, then retraining on the kept rows; ``model`` is untouched."""
    return _filter(copy.deepcopy(model), ctx, cfg.layer, cfg.batch_size,
                   lambda r, y, rv, yv: spectral_signatures(r, y, cfg.epsilon, cfg.removal_factor, cfg.rule, rv, yv,
                                                            cfg.false_removal_rate),
                   cfg.label or cfg.name, cfg.rule == "validation")


def activation_clustering_defense(model: nn.Module, cfg: ActivationClusteringConfig, ctx: FilterContext,
                                  seed: int = 0, device: torch.device | str = "cpu") -> DefenseOutcome:
    """Activation Clustering, then retraining on the kept rows; ``model`` is untouched."""
    check = (lambda result, name: exclusionary_check(result, ctx, cfg.exclusionary_threshold, name, cfg.batch_size,
                                                     device)) if cfg.exclusionary else None
    return _filter(copy.deepcopy(model), ctx, cfg.layer, cfg.batch_size,
                   lambda r, y, rv, yv: activation_clustering(r, y, cfg.dims, cfg.reduce, cfg.rule, cfg.size_threshold,
                                                              cfg.silhouette_threshold, seed, rv, yv,
                                                              cfg.validation_ratio),
                   cfg.label or cfg.name, cfg.rule == "validation", check)


def exclusionary_check(result: FilterResult, ctx: FilterContext, threshold: float, name: str, batch_size: int = 1024,
                       device: torch.device | str = "cpu") -> None:
    """Exclusionary reclassification of every flagged cluster (Chen et al. 2018, Sec. 4.3), in place:
    the victim is retrained without the cluster's rows and classifies them; a cluster given
    its own label (:func:`~poisonlab.defenses.activation_clustering.exclusionary_reclassification`)
    is legitimate and its rows are kept. Records, per checked class, ``exclusionary``:
    ``{"poison": bool, "own_label_share": float}``."""
    from ..train import predict

    classes = result.details.get("classes", {})
    for c, info in classes.items():
        if not info.get("flagged"):
            continue
        rows = np.flatnonzero(result.remove & (ctx.train.y.numpy() == c))
        kept = np.setdiff1d(np.arange(len(result.remove)), rows)
        without = ctx.retrain(ctx.train.subset(torch.from_numpy(kept)), f"{name} without class {c}'s cluster")
        pred = predict(without, ctx.train.x[torch.from_numpy(rows)], batch_size, device,
                       desc=f"{name}: reclassify class {c}'s cluster").numpy()
        poison, share = exclusionary_reclassification(pred, int(c), threshold)
        info["exclusionary"] = {"poison": bool(poison), "own_label_share": share}
        if not poison:
            result.remove[rows] = False
            result.scores[rows] = 0.0
            info["flagged"] = False
