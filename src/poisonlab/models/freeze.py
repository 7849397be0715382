"""Training only the last linear layer of a network, the rest frozen in eval mode: the transfer
setting of Poison Frogs (Shafahi et al. 2018, Sec. 4.1), reached by ``train.trainable: last``
(every fit) or ``victim.trainable: last`` (the victims only)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PoisonlabError


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` of ``model`` in module order; one-line error if it has none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise PoisonlabError(f"trainable 'last' (train.trainable or victim.trainable) needs a model with a final "
                             f"nn.Linear layer; {type(model).__name__} has none (use trainable: all)")
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
