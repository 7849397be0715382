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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..checks import MAX_BATCH, is_number, is_whole, need_int, need_number
from ..errors import PoisonlabError, did_you_mean, shown
from .activation_clustering import activation_clustering, exclusionary_reclassification
from .filtering import FilterResult, detection_metrics, representations
from .pruning_config import DefenseOutcome
from .registry import DefenseInputs, FilterContext
from .spectral import spectral_signatures

__all__ = ["ActivationClusteringConfig", "FilterContext", "SpectralConfig", "activation_clustering_defense",
           "exclusionary_check", "removal_report", "spectral_defense"]


MAX_DIMS = 10_000


def _fail(where: str, key: str, what: str, value: Any) -> None:
    raise PoisonlabError(f"{where}.{key} must be {what}, got {shown(value)}")


def _share(v: Any, where: str, key: str, low_open: bool, high_open: bool, what: str = "") -> None:
    """``v`` a number in the interval from 0 to 1 with the open ends given (one-line error)."""
    ok = is_number(v) and (0 < v if low_open else 0 <= v) and (v < 1 if high_open else v <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        _fail(where, key, f"a number in {interval}{f' ({what})' if what else ''}", v)


def _choice(v: Any, where: str, key: str, allowed: list[str]) -> None:
    if v not in allowed:
        hint = did_you_mean(v, allowed) if isinstance(v, str) and len(v) <= 100 else ""
        _fail(where, key, " or ".join(allowed) + hint, v)


@dataclass
class SpectralConfig:
    """``defenses:`` keys of Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, Algorithm 1).

    ``rule: budget`` (the paper): ``epsilon`` is the poison rate the defender assumes and
    ``removal_factor * epsilon`` of each class (by training label) is removed. Defaults:
    ``removal_factor = 1.5`` (the paper's), ``epsilon = 0.05`` (the smaller of the two poison
    rates of the paper's experiments, 5 % and 10 %; state your own assumed rate). ``rule:
    validation``: scores are centred at each class's clean validation mean and rows scoring
    above what ``false_removal_rate`` (default 0.05) of the class's validation rows score are
    removed (no poison rate assumed). ``layer``: the representation read (``auto``: the input
    of the last Linear layer)."""

    name: str = "spectral-signatures"
    label: str | None = None
    rule: Literal["budget", "validation"] = "budget"
    epsilon: float = 0.05
    removal_factor: float = 1.5
    false_removal_rate: float = 0.05
    layer: str | None = "auto"
    batch_size: int = 1024

    def validate(self, where: str = "defense") -> None:
        _choice(self.rule, where, "rule", ["budget", "validation"])
        _share(self.epsilon, where, "epsilon", True, True, "the assumed poison rate")
        if not (is_number(self.removal_factor) and self.removal_factor > 0):
            _fail(where, "removal_factor", "a number > 0", self.removal_factor)
        need_number(self.removal_factor, f"{where}.removal_factor", 0, 100, low_open=True)
        _share(self.false_removal_rate, where, "false_removal_rate", False, True,
               "the share of clean validation rows removed")
        need_int(self.batch_size, f"{where}.batch_size", 1, MAX_BATCH)

    def extra_needs(self) -> frozenset[str]:
        return frozenset({"validation"}) if self.rule == "validation" else frozenset()


@dataclass
class ActivationClusteringConfig:
    """``defenses:`` keys of Activation Clustering (Chen et al. 2018, Sec. 4): per class, reduce
    the activations to ``dims`` dimensions, 2-means, flag the smaller cluster by relative size
    or silhouette. Defaults are the paper's: ``reduce = ica`` (FastICA), ``dims = 10``,
    ``size_threshold = 0.35``; ``silhouette_threshold = 0.10``. ``rule: validation`` flags a
    cluster whose share of the clean validation rows is below ``validation_ratio`` (0.5) times
    its share of the training rows."""

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

    def validate(self, where: str = "defense") -> None:
        if not (is_whole(self.dims) and self.dims >= 1):
            _fail(where, "dims", "an integer >= 1", self.dims)
        need_int(self.dims, f"{where}.dims", 1, MAX_DIMS, "dimensions kept per class")
        _choice(self.reduce, where, "reduce", ["pca", "ica"])
        _choice(self.rule, where, "rule", ["size", "silhouette", "validation"])
        _share(self.size_threshold, where, "size_threshold", True, True)
        if not (is_number(self.silhouette_threshold) and -1 <= self.silhouette_threshold <= 1):
            _fail(where, "silhouette_threshold", "a number in [-1, 1]", self.silhouette_threshold)
        _share(self.validation_ratio, where, "validation_ratio", True, False,
               "a cluster is flagged when its share of validation rows is below this times its share "
               "of training rows")
        if not (is_number(self.exclusionary_threshold) and self.exclusionary_threshold >= 0):
            raise PoisonlabError(f"{where}.exclusionary_threshold must be >= 0 (the own-label count must exceed this "
                                 f"times the largest other-class count), got {shown(self.exclusionary_threshold)}")
        need_number(self.exclusionary_threshold, f"{where}.exclusionary_threshold", 0, 1e6)
        need_int(self.batch_size, f"{where}.batch_size", 1, MAX_BATCH)

    def extra_needs(self) -> frozenset[str]:
        return frozenset({"validation"}) if self.rule == "validation" else frozenset()


Decide = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"], FilterResult]


def removal_report(remove: np.ndarray, ctx: DefenseInputs) -> dict[str, Any]:
    """What a removal of training rows reports: how many, which share, and (with the poison
    mask) detection precision / recall / FPR and the share of the target class's clean rows."""
    assert ctx.train is not None
    out: dict[str, Any] = {"n_removed": int(remove.sum()), "removed_share": float(remove.mean()) if len(remove) else 0.0}
    if ctx.poison_mask is not None:
        poison = ctx.poison_mask.numpy() if isinstance(ctx.poison_mask, torch.Tensor) else np.asarray(ctx.poison_mask)
        if ctx.train.is_regression:  # no classes: the detection counts only (one "class")
            m = detection_metrics(remove, poison, np.zeros(len(ctx.train), dtype=np.int64), 1)
        else:
            m = detection_metrics(remove, poison, ctx.train.y.numpy(), ctx.train.num_classes)
        out["detection"] = m
        if ctx.target is not None:
            out["target_class_clean_removed"] = m["clean_removed_share_per_class"][ctx.target]
    return out


def model_state_token(model: torch.nn.Module) -> tuple:
    """What identifies a model's current function: the object, every parameter's and buffer's
    storage and in-place version counter, and the forward hooks attached to its modules (a
    pruning mask is a hook). Any change to weights, buffers or hooks gives a new token."""
    tensors = tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
    hooks = tuple(tuple(m._forward_hooks) + tuple(m._forward_pre_hooks) for m in model.modules())
    return id(model), tensors, hooks


def shared_representations(ctx: DefenseInputs, model: torch.nn.Module, data: Any, layer: str | None,
                           batch_size: int) -> np.ndarray:
    """:func:`~poisonlab.defenses.filtering.representations` of ``data``'s rows by ``model`` (a
    copy of ``ctx.model``), computed once per victim for every defense that reads the same
    layer (Spectral Signatures and both Activation Clustering variants of a run share one
    pass). The key holds the suspect model's state token, the data tensor's identity and
    version, the layer and the batch size, so a changed model or data set is a miss. The
    array is shared: defenses read it, never write it."""
    key = ("representations", model_state_token(ctx.model), id(data.x), data.x._version, data.x.data_ptr(),
           layer, batch_size)
    if key not in ctx.cache:
        ctx.cache[key] = representations(model, data.x, layer, batch_size)
    return ctx.cache[key]


def _filter(ctx: DefenseInputs, layer: str | None, batch_size: int, decide: Decide, name: str,
            needs_val: bool, check: Callable[[FilterResult, str], None] | None = None) -> DefenseOutcome:
    if ctx.model is None or ctx.train is None or ctx.retrain is None:
        raise PoisonlabError(f"defense '{name}' filters the training set: it needs the suspect model, the training "
                             f"set and a way to retrain the victim")
    model = copy.deepcopy(ctx.model)  # the suspect model is untouched
    reprs = shared_representations(ctx, model.eval(), ctx.train, layer, batch_size)
    labels = ctx.train.y.numpy()
    val_reprs = val_labels = None
    if needs_val:
        if ctx.val is None or len(ctx.val) == 0:
            raise PoisonlabError(f"defense '{name}' with rule 'validation' reads the clean validation split; "
                                 f"set data.val_fraction > 0")
        val_reprs = shared_representations(ctx, model, ctx.val, layer, batch_size)
        val_labels = ctx.val.y.numpy()
    result = decide(reprs, labels, val_reprs, val_labels)
    if check is not None:
        check(result, name)
    keep = torch.from_numpy(result.keep)
    # nothing removed: retraining on the same rows would give the same model (training is seeded)
    retrained = ctx.retrain(ctx.train.subset(keep.nonzero().flatten()), name) if result.n_removed else model
    per_class = {c: {k: v for k, v in info.items() if k != "direction"}  # drop the per-class singular vectors
                 for c, info in result.details.get("classes", {}).items()}
    extra = {**removal_report(result.remove, ctx), "retrained": bool(result.n_removed), "per_class": per_class}
    return DefenseOutcome(retrained, extra=extra, removed=result.remove.copy())


def spectral_defense(cfg: SpectralConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """Spectral Signatures on the suspect model's representations of its training rows, then
    retraining on the kept rows; the suspect model is untouched."""
    return _filter(ctx, cfg.layer, cfg.batch_size,
                   lambda r, y, rv, yv: spectral_signatures(r, y, cfg.epsilon, cfg.removal_factor, cfg.rule, rv, yv,
                                                            cfg.false_removal_rate),
                   cfg.label or cfg.name, cfg.rule == "validation")


def activation_clustering_defense(cfg: ActivationClusteringConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """Activation Clustering, then retraining on the kept rows; the suspect model is untouched."""
    check = (lambda result, name: exclusionary_check(result, ctx, cfg.exclusionary_threshold, name, cfg.batch_size,
                                                     ctx.device)) if cfg.exclusionary else None
    return _filter(ctx, cfg.layer, cfg.batch_size,
                   lambda r, y, rv, yv: activation_clustering(r, y, cfg.dims, cfg.reduce, cfg.rule, cfg.size_threshold,
                                                              cfg.silhouette_threshold, ctx.seed, rv, yv,
                                                              cfg.validation_ratio),
                   cfg.label or cfg.name, cfg.rule == "validation", check)


def exclusionary_check(result: FilterResult, ctx: DefenseInputs, threshold: float, name: str, batch_size: int = 1024,
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
