"""Differentiable features of a torch model at a named layer (the attacker's feature space).

``auto`` is the input of the last ``nn.Linear`` of a Sequential network (the penultimate layer
Poison Frogs collides in); any other name is a layer of ``model`` (``named_modules``)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import PoisonlabError
from ..models.layers import get_layer


def resolve_feature_layer(model: nn.Module, layer: str) -> str | None:
    """The layer name ``layer`` stands for (``None``: the raw input); one-line error if unknown."""
    if layer == "auto":
        from ..subpop.learners import last_hidden_layer

        try:
            return last_hidden_layer(model)
        except PoisonlabError as exc:
            raise PoisonlabError(f"attack.layer 'auto': {exc}; name the feature layer (attack.layer)") from None
    get_layer(model, layer)
    return layer


def feature_map(model: nn.Module, layer: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (N, D)`` features of ``model`` at ``layer``, differentiable in ``x``; the model in eval
    mode, its parameters untouched (gradients flow to the input only)."""
    model.eval()
    if layer is None:
        return lambda x: x.reshape(len(x), -1)
    module = get_layer(model, layer)

    def features(x: torch.Tensor) -> torch.Tensor:
        got: list[torch.Tensor] = []

        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            got.append(out)
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got[0].reshape(len(x), -1)

    return features


class _Stop(Exception):
    """Raised by the hook: the layers after the feature layer are not computed."""
