"""Read any layer's activations by name, with forward hooks (works on user models too).

Defenses (activation clustering, spectral signatures, pruning) and ClusterMatch ask for
a layer by its ``named_modules`` name, e.g. ``"conv2"`` or ``"layer4.1.conv2"``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PoisonlabError, did_you_mean


def layer_names(model: nn.Module) -> list[str]:
    """Names of every sub-module, in definition order (the model itself excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; an unknown name lists the known ones."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        known = layer_names(model)
        raise PoisonlabError(f"model has no layer '{name}'{did_you_mean(name, known)}; layers: {', '.join(known)}")
    return modules[name]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's 2-D convolutions, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of the model (for the BadNets first-layer filter plot)."""
    names = conv_layers(model)
    if not names:
        raise PoisonlabError("model has no convolution layer; filter plots need a CNN")
    return get_layer(model, names[0])  # type: ignore[return-value]


@torch.no_grad()
def activations(
    model: nn.Module, x: torch.Tensor, layers: list[str] | str, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for every row of ``x``, in one pass over the data.

    Returns ``{name: tensor (N, ...)}`` on the CPU. The model is put in eval mode for
    the pass and restored afterwards.

    >>> from poisonlab.models import build_model
    >>> m = build_model("mlp", (4,), 2, {"hidden": [3]})
    >>> activations(m, torch.zeros(5, 4), "relu1")["relu1"].shape
    torch.Size([5, 3])
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor, n: str = n) -> None:
            chunks[n].append(out.detach().to("cpu"))

        handles.append(get_layer(model, n).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # no autograd graph: the same values, no graph kept
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: torch.cat(c) if c else torch.empty(0) for n, c in chunks.items()}
