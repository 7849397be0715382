"""Fitting a victim by its own recipe (``victim:`` of the config): from the clean reference's
weights or from scratch, every layer or the last one only, with its own training settings and
seed. The transfer setting of Poison Frogs (Shafahi et al. 2018, Sec. 4.1) is ``init:
reference, trainable: last``: the features stay those of the clean model, frozen in eval mode
(batch-norm statistics and dropout included), and only the last linear layer is retrained."""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import PoisonlabError
from ..models.freeze import LastLayerOnly, last_linear  # noqa: F401  (re-exported)
from ..models.learners import fit_learner, is_torch
from .context import Context, TrainedModel


def fit_by_recipe(ctx: Context, model: nn.Module, data: Any, desc: str, seed: int) -> TrainedModel:
    """Train the fresh ``model`` (built and seeded by the caller) on ``data`` by ``ctx.cfg.victim``."""
    recipe = ctx.cfg.victim
    if not is_torch(model) and (recipe.init != "scratch" or recipe.trainable != "all"):
        raise PoisonlabError("victim.init 'reference' and victim.trainable 'last' need a torch network; "
                             "remove them for an estimator")
    if recipe.init == "reference":
        if ctx.clean is None:
            raise PoisonlabError("victim.init 'reference' needs the clean reference fitted first")
        model.load_state_dict(ctx.clean.model.state_dict())
    train_cfg = recipe.train_config(ctx.cfg.train)
    if recipe.trainable == "last":
        train_cfg = dataclasses.replace(train_cfg, trainable="last")
    result = fit_learner(model, data, train_cfg, seed=seed, device=ctx.device, val=ctx.val, desc=desc)
    return TrainedModel(model.cpu(), result)


def check_recipe(ctx: Context, model: nn.Module) -> None:
    """Fail before any training when the recipe cannot train this model."""
    recipe = ctx.cfg.victim
    last = recipe.trainable == "last" or recipe.train_config(ctx.cfg.train).trainable == "last"
    if last and not is_torch(model):
        raise PoisonlabError("train.trainable 'last' and victim.trainable 'last' need a torch network; "
                             "remove them for an estimator")
    if last:
        last_linear(model)
    if not is_torch(model) and not recipe.is_default:
        raise PoisonlabError("victim.init, victim.trainable and victim.train apply to torch networks; "
                             "remove them for an estimator")
