"""Training only the last linear layer of a network, the rest frozen in eval mode: the transfer
setting of Poison Frogs (Shafahi et al. 2018, Sec. 4.1), reached by ``train.trainable: last``
(every fit) or ``victim.trainable: last`` (the victims only)."""
from __future__ import annotations

from typing import Any

import torch
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


def last_layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int,
                      device: torch.device | str) -> torch.Tensor:
    """What ``layer`` receives for each row of ``x``, ``model`` in eval mode (CPU float tensor)."""
    got: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inp, _out: got.append(inp[0].detach().float().cpu()))
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(got) if got else torch.zeros(0)


def fit_last_layer(model: nn.Module, data: Any, cfg: Any, seed: int, device: torch.device | str,
                   val: Any, desc: str) -> Any:
    """``train.trainable: last``: the frozen layers' output (the last linear layer's input) is
    computed once per row in eval mode, then the last linear layer alone is trained on it by the
    same trainer, seed and settings: the same optimisation as through the whole network (whose
    frozen part gives each row the same features every epoch), without a forward pass of the
    frozen layers per epoch. A model whose last linear layer is not its output (a layer after
    it) is trained through :class:`LastLayerOnly` instead."""
    from ..data.base import Dataset
    from ..train import train_model

    name = last_linear(model)
    layer = model.get_submodule(name)
    model.to(device)
    feats = last_layer_inputs(model, layer, data.x, cfg.eval_batch_size, device)
    with torch.no_grad():
        probe = data.x[:4].to(device)
        direct = model(probe).float().cpu()
        through = layer(feats[:4].to(device)).float().cpu()
    if direct.shape != through.shape or not torch.allclose(direct, through, rtol=1e-4, atol=1e-5):
        wrapped = LastLayerOnly(model, name)
        try:
            return train_model(wrapped, data, cfg, seed=seed, device=device, val=val, desc=desc)
        finally:
            wrapped.release()
    train = Dataset(feats, data.y, list(data.classes))
    held = None if val is None else Dataset(last_layer_inputs(model, layer, val.x, cfg.eval_batch_size, device),
                                            val.y, list(val.classes))
    return train_model(layer, train, cfg, seed=seed, device=device, val=held, desc=desc)
