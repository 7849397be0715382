"""Fitting the experiment's learner: the clean reference (cached) and every victim, the same way.

Both are built from the run's seed and trained with the same settings on the same clean rows
(the validation split is carved first); a victim's training set also holds the poison rows.
The clean reference is cached (:mod:`poisonlab.baseline_cache`, keyed by the data, model,
settings and code that determine it), so that a grid of attacks fits it once.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import baseline_cache
from ..data.base import Dataset
from ..errors import PoisonlabError
from ..models import build_model
from ..models.learners import fit_learner, is_torch, model_fingerprint
from ..models.pretrained import load_pretrained, weights_digest
from ..train import seed_everything
from .context import Context, TrainedModel


def new_model(ctx: Context, data: Dataset) -> nn.Module:
    """A fresh instance of the configured model for ``data``'s input shape and classes (unseeded;
    started from ``model.weights`` when given)."""
    m = ctx.cfg.model
    model = build_model(m.name, tuple(data.x.shape[1:]), data.num_classes, m.options)
    if m.weights is not None:
        if not is_torch(model):
            raise PoisonlabError(f"model.weights loads a torch network's weights; {m.name} is not one (remove it)")
        load_pretrained(model, m.weights)
    return model


def fit(ctx: Context, data: Dataset, desc: str, seed: int | None = None) -> TrainedModel:
    """The configured model, initialised from ``seed`` (default: the run's) and trained on ``data``."""
    seed = ctx.cfg.seed if seed is None else seed
    seed_everything(seed)
    model = new_model(ctx, data)
    result = fit_learner(model, data, ctx.cfg.train, seed=seed, device=ctx.device, val=ctx.val, desc=desc)
    return TrainedModel(model.cpu(), result)


def fit_poisoned(ctx: Context, data: Dataset, desc: str, seed: int | None = None) -> TrainedModel:
    """A victim: trained like the clean reference (:func:`fit`) unless ``victim:`` gives it a recipe
    of its own (:mod:`poisonlab.pipeline.victim_fit`)."""
    if ctx.cfg.victim.is_default:
        return fit(ctx, data, desc, seed)
    from .victim_fit import fit_by_recipe

    seed = ctx.cfg.seed if seed is None else seed
    seed_everything(seed)
    return fit_by_recipe(ctx, new_model(ctx, data), data, desc, seed)


def clean_key(ctx: Context, train: Dataset, model: nn.Module) -> str:
    """What determines the clean reference (:func:`poisonlab.baseline_cache.baseline_key`): the data
    actually trained and validated on, the model's architecture (class, source, parameter
    shapes: :func:`~poisonlab.models.learners.model_fingerprint`), training, seed, code and what
    optional steps add (the transfer experiment's teacher share)."""
    cfg = ctx.cfg
    what = {"data": {k: v for k, v in vars(cfg.data).items() if k != "dir"},
            "model": vars(cfg.model), "train": vars(cfg.train), "seed": cfg.seed, **ctx.baseline_key_extra}
    if cfg.model.weights is not None:
        what["model_weights"] = weights_digest(cfg.model.weights)
    return baseline_cache.baseline_key(what, train, ctx.val, ctx.device, model_fp=model_fingerprint(model))


def fit_clean(ctx: Context, train: Dataset) -> TrainedModel:
    """The clean reference, loaded from the cache when an identical one was fitted before (a
    damaged, non-finite or mismatched entry is a miss: fitted again and rewritten)."""
    out = ctx.cfg.output
    cache = Path(out.dir) / baseline_cache.CACHE_DIR
    model = new_model(ctx, train)
    # only torch weights are cached (as safetensors); an estimator is fitted again
    use_cache = out.cache_baseline and is_torch(model)
    key = clean_key(ctx, train, model) if use_cache else ""
    if use_cache:
        meta = baseline_cache.load(cache, key, model)
        if meta is not None:
            model.eval()
            return TrainedModel(model, meta, cached=True)
    trained = fit(ctx, train, "baseline")
    if use_cache:
        baseline_cache.save(cache, key, trained.model, trained.result)
    return trained


def device_of(name: str) -> torch.device:
    """The torch device a config's ``device`` names (``auto``: CUDA when present)."""
    from ..train import resolve_device

    return resolve_device(name)
