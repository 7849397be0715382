"""Fitting a victim by its own recipe (``victim:`` of the config): from the clean reference's
weights or from scratch, every layer or the last one only, with its own training settings and
seed. The transfer setting of Poison Frogs (Shafahi et al. 2018, Sec. 4.1) is ``init:
reference, trainable: last``: the features stay those of the clean model, frozen in eval mode
(batch-norm statistics and dropout included), and only the last linear layer is retrained."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PoisonlabError
from ..models.learners import fit_learner, is_torch
from .context import Context, TrainedModel


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` of ``model`` in module order; one-line error if it has none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise PoisonlabError(f"victim.trainable 'last' needs a model with a final nn.Linear layer; "
                             f"{type(model).__name__} has none (use trainable: all)")
    return names[-1]


class LastLayerOnly(nn.Module):
    """``model`` with every parameter but those of ``layer`` frozen and every other module kept
    in eval mode, whatever ``train()`` asks (so frozen batch-norm statistics do not move)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.inner = model
        self.layer = layer
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(layer + "."))

    def train(self, mode: bool = True) -> "LastLayerOnly":
        super().train(mode)
        if mode:
            self.inner.eval()
            self.inner.get_submodule(self.layer).train()
        return self

    def forward(self, x: Any) -> Any:
        return self.inner(x)

    def release(self) -> nn.Module:
        """The inner model, every parameter trainable again (defenses may fine-tune it)."""
        for p in self.inner.parameters():
            p.requires_grad_(True)
        return self.inner


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
    target = LastLayerOnly(model, last_linear(model)) if recipe.trainable == "last" else model
    result = fit_learner(target, data, recipe.train_config(ctx.cfg.train), seed=seed, device=ctx.device,
                         val=ctx.val, desc=desc)
    if isinstance(target, LastLayerOnly):
        target.release()
    return TrainedModel(model.cpu(), result)


def check_recipe(ctx: Context, model: nn.Module) -> None:
    """Fail before any training when the recipe cannot train this model."""
    recipe = ctx.cfg.victim
    if recipe.trainable == "last":
        last_linear(model)
    if not is_torch(model) and not recipe.is_default:
        raise PoisonlabError("victim.init, victim.trainable and victim.train apply to torch networks; "
                             "remove them for an estimator")
