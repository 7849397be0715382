"""Fine-Pruning's channel mask and activation ranking (Liu, Dolan-Gavitt, Garg, RAID 2018,
arXiv 1805.12185, Sec. 3.1): which layer is pruned, where its channels are zeroed, and the
clean mean activations that order them. The curve and the defense are in
:mod:`poisonlab.defenses.pruning`.

**Where a channel is pruned.** A channel of conv layer ``L`` is pruned by zeroing it in
the output of ``L``'s *activation point*: the module whose output is the tensor the
next layer consumes. Weights are never touched; a forward hook fills the pruned channels
with exact zeros (:class:`ChannelMask`). The point is found by :func:`activation_point`:

1. ``L`` inside an ``nn.Sequential``: the last module of the run that follows ``L`` made
   of at most one ``BatchNorm2d`` (same width) and then element-wise activations
   (BadNets ``conv2`` -> ``relu2``; small-cnn ``conv6`` -> ``bn6`` -> ``relu6``).
2. ``L`` the last convolution among the direct children of a block with its own
   ``forward`` (not the model itself): the block's output (ResNet ``layer4.1.conv2`` ->
   ``layer4.1`` = relu(bn2(conv2) + shortcut), what the classifier head reads).
3. Otherwise the ``BatchNorm2d`` that directly follows ``L`` among its siblings, if any
   (ResNet ``conv1`` -> ``bn1``: a zero stays zero through the ReLU after it), else ``L``.

**Hidden units of a Linear layer** (``kind="linear"``, e.g. the subpopulation attack's MLP
victim, Jagielski et al. 2021, Sec. 6): the same procedure prunes the output units of an
``nn.Linear`` hidden layer (every ``nn.Linear`` but the model's last, the output layer; by
default the last hidden one, the layer before the output). Its activation point is found as
in rule 1 (a ``BatchNorm1d`` of the same width and element-wise activations after it in an
``nn.Sequential``: MLP ``fc1`` -> ``relu1``), else the layer itself; the units are dim 1 of
its (N, units) output. ``kind="conv"`` (the default) keeps the convolution-only behaviour.

Any module can be named instead with ``mask_at``. The same point is where the clean mean
activations that order the channels are measured, so "prune" and "rank" read one tensor.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from ..errors import PoisonlabError, shown
from ..models.layers import conv_layers, get_layer

#: modules that act element-wise and keep the channel count: part of a conv's activation block
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)

#: what :func:`resolve_layer` prunes: output channels of a Conv2d, or hidden units of a Linear layer
LayerKind = Literal["conv", "linear"]


# -- layers and activation points ---------------------------------------------------
def hidden_linear_layers(model: nn.Module) -> list[str]:
    """Names of the model's hidden ``nn.Linear`` layers, in order: every one but the last
    (the output layer)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]


def _check_kind(kind: str) -> None:
    if kind not in ("conv", "linear"):
        raise PoisonlabError(f"kind must be 'conv' (Conv2d channels) or 'linear' (hidden units of a Linear layer), "
                             f"got {shown(kind)}")


def _width(module: nn.Module) -> int:
    """Channels of a Conv2d, units of a Linear layer."""
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)  # type: ignore[arg-type]


def resolve_layer(model: nn.Module, layer: str | None, kind: LayerKind = "conv") -> str:
    """The layer to prune. ``kind="conv"``: ``layer`` checked to be an ``nn.Conv2d``, or the
    last one. ``kind="linear"``: ``layer`` checked to be a hidden ``nn.Linear`` (not the output
    layer), or the last hidden one (the layer before the output)."""
    _check_kind(kind)
    if kind == "linear":
        hidden = hidden_linear_layers(model)
        if layer is None:
            if not hidden:
                raise PoisonlabError("the model has no hidden Linear layer (logistic regression?); Fine-Pruning "
                                     "prunes hidden units: give the model a hidden layer, e.g. mlp hidden: [10]")
            return hidden[-1]
        module = get_layer(model, layer)
        if not isinstance(module, nn.Linear):
            raise PoisonlabError(f"layer '{layer}' is a {type(module).__name__}, not a Linear; hidden Linear "
                                 f"layers: {', '.join(hidden) or 'none'}")
        if layer not in hidden:
            raise PoisonlabError(f"layer '{layer}' is the output layer; Fine-Pruning prunes hidden units; hidden "
                                 f"Linear layers: {', '.join(hidden) or 'none'}")
        return layer
    convs = conv_layers(model)
    if layer is None:
        if not convs:
            raise PoisonlabError("the model has no Conv2d layer; Fine-Pruning prunes convolution channels")
        return convs[-1]
    module = get_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        raise PoisonlabError(f"layer '{layer}' is a {type(module).__name__}, not a Conv2d; Fine-Pruning prunes "
                             f"convolution channels; conv layers: {', '.join(convs) or 'none'}")
    return layer


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _following_bn(children: list[tuple[str, nn.Module]], i: int, width: int,
                  bn_type: type[nn.Module] = nn.BatchNorm2d) -> str | None:
    """Name of the child right after index ``i`` if it is a ``bn_type`` batch norm of ``width``."""
    if i + 1 < len(children):
        name, module = children[i + 1]
        if isinstance(module, bn_type) and module.num_features == width:
            return name
    return None


def activation_point(model: nn.Module, layer: str, mask_at: str | None = None, kind: LayerKind = "conv") -> str:
    """Name of the module whose output is the activation of ``layer`` (module docstring).

    >>> from poisonlab.models import build_model
    >>> activation_point(build_model("small-cnn", (3, 32, 32), 10), "conv6")
    'relu6'
    >>> activation_point(build_model("mlp", (4,), 2, {"hidden": [3]}), "fc1", kind="linear")
    'relu1'
    """
    layer = resolve_layer(model, layer, kind)
    if mask_at is not None:
        if not mask_at:
            raise PoisonlabError("mask_at names the whole model; name the sub-module whose output holds the channels")
        get_layer(model, mask_at)
        return mask_at
    conv = get_layer(model, layer)
    parent_name, child = _split(layer)
    parent = get_layer(model, parent_name) if parent_name else model
    children = list(parent.named_children())
    i = [n for n, _ in children].index(child)
    width = _width(conv)
    prefix = f"{parent_name}." if parent_name else ""
    bn_type: type[nn.Module] = nn.BatchNorm1d if kind == "linear" else nn.BatchNorm2d
    if _is_plain_sequential(parent):
        bn = _following_bn(children, i, width, bn_type)
        last, j = (bn, i + 2) if bn else (child, i + 1)
        while j < len(children) and isinstance(children[j][1], ELEMENTWISE):
            last = children[j][0]
            j += 1
        return prefix + last
    if kind == "linear":
        return prefix + (_following_bn(children, i, width, bn_type) or child)
    convs = [n for n, m in children if isinstance(m, nn.Conv2d)]
    if parent_name and convs[-1] == child:
        return parent_name
    bn = _following_bn(children, i, width)
    return prefix + (bn or child)


def bias_site(model: nn.Module, layer: str) -> tuple[str, nn.Parameter]:
    """The bias that shifts conv ``layer``'s channels additively: the affine ``BatchNorm2d``
    right after it (eval mode), else the conv's own bias (for the pruning-aware attack)."""
    layer = resolve_layer(model, layer)
    parent_name, child = _split(layer)
    parent = get_layer(model, parent_name) if parent_name else model
    children = list(parent.named_children())
    i = [n for n, _ in children].index(child)
    conv = children[i][1]
    bn = _following_bn(children, i, conv.out_channels)  # type: ignore[union-attr]
    prefix = f"{parent_name}." if parent_name else ""
    if bn is not None:
        module = dict(children)[bn]
        if module.bias is None:
            raise PoisonlabError(f"batch norm '{prefix}{bn}' after '{layer}' has no bias (affine=False); "
                                 "the pruning-aware attack lowers biases")
        return prefix + bn, module.bias
    if conv.bias is None:  # type: ignore[union-attr]
        raise PoisonlabError(f"layer '{layer}' has no bias and no batch norm after it; "
                             "the pruning-aware attack lowers biases")
    return layer, conv.bias  # type: ignore[return-value]


# -- the mask -------------------------------------------------------------------------
def _check_output(out: Any, channels: int, where: str) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[1] != channels:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PoisonlabError(f"module '{where}' outputs {got}, not {channels} channels in dim 1; "
                             "pass mask_at naming the module whose output holds the pruned layer's channels")


class _MaskHook:
    """The forward hook itself: fills the dropped channels (dim 1) with exact zeros.

    Kept apart from :class:`ChannelMask` so that a deep copy of a masked model carries a
    working (frozen) copy of the mask and nothing that could edit the original's hooks.
    """

    def __init__(self, channels: int, where: str) -> None:
        self.drop = torch.zeros(channels, dtype=torch.bool)
        self.active = False  # any channel dropped (a Python bool: no device sync per forward)
        self.where = where

    def set(self, drop: torch.Tensor) -> None:
        self.drop, self.active = drop, bool(drop.any())

    def __call__(self, _module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
        _check_output(out, len(self.drop), self.where)
        if not self.active:
            return None
        if self.drop.device != out.device:
            self.drop = self.drop.to(out.device)
        view = self.drop.view(1, -1, *([1] * (out.dim() - 2)))
        return out.masked_fill(view, 0)


class ChannelMask:
    """Prunes output channels of conv ``layer`` (or, with ``kind="linear"``, hidden units of a
    Linear layer) by zeroing them at its activation point.

    The weights stay untouched; the zeros come from a forward hook, so they hold in
    ``train()`` and ``eval()`` mode, on any device, and for gradients (a pruned channel
    passes no gradient). ``remove()`` (or leaving a ``with`` block) restores the model.

    >>> from poisonlab.models import build_model
    >>> m = build_model("badnet-mnist", (1, 16, 16), 3)
    >>> mask = ChannelMask(m, "conv2"); mask.prune([0, 5]); mask.point, mask.pruned
    ('relu2', [0, 5])
    """

    def __init__(self, model: nn.Module, layer: str | None = None, mask_at: str | None = None,
                 kind: LayerKind = "conv") -> None:
        self.kind = kind
        self.layer = resolve_layer(model, layer, kind)
        self.point = activation_point(model, self.layer, mask_at, kind)
        self.channels: int = _width(get_layer(model, self.layer))
        self._hook = _MaskHook(self.channels, self.point)
        self._handle: Any = get_layer(model, self.point).register_forward_hook(self._hook)

    @property
    def pruned(self) -> list[int]:
        """Pruned channel indices, ascending."""
        return self._hook.drop.nonzero().flatten().tolist()

    def _check(self, channels: Iterable[int]) -> list[int]:
        chosen = [int(c) for c in channels]
        bad = [c for c in chosen if not 0 <= c < self.channels]
        if bad:
            raise PoisonlabError(f"layer '{self.layer}' has channels 0..{self.channels - 1}; cannot prune {bad}")
        return chosen

    def prune(self, channels: Iterable[int]) -> None:
        """Add ``channels`` to the pruned set."""
        chosen = self._check(channels)
        drop = self._hook.drop.clone()
        drop[chosen] = True
        self._hook.set(drop)

    def set(self, channels: Iterable[int]) -> None:
        """Make ``channels`` exactly the pruned set."""
        chosen = self._check(channels)
        drop = torch.zeros(self.channels, dtype=torch.bool, device=self._hook.drop.device)
        drop[chosen] = True
        self._hook.set(drop)

    def clear(self) -> None:
        """Un-prune every channel (the hook stays attached)."""
        self.set([])

    def remove(self) -> None:
        """Detach the hook: the model computes exactly what it did before the mask."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self):  # the mask itself
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


# -- ranking channels -------------------------------------------------------------------
@torch.no_grad()
def channel_stats(model: nn.Module, point: str, x: torch.Tensor, batch_size: int = 2048,
                  device: torch.device | str = "cpu", channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (over N, H, W) and max of module ``point``'s output on ``x``, one pass.

    Raises if ``point`` runs more or less than once per forward pass (e.g. a ReLU module
    shared inside a residual block): then its output is not one layer's activation; and,
    given ``channels``, if the output does not have that many channels in dim 1.
    """
    if len(x) == 0:
        raise PoisonlabError("no clean rows to measure channel activations on")
    sums: list[torch.Tensor] = []
    maxes: list[torch.Tensor] = []
    count = [0, 0]  # hook calls, elements per channel

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if channels is not None:
            _check_output(out, channels, point)
        dims = [d for d in range(out.dim()) if d != 1]
        sums.append(out.detach().double().sum(dims).cpu())
        maxes.append(out.detach().amax(dims).float().cpu())
        count[0] += 1
        count[1] += out.numel() // out.shape[1]

    handle = get_layer(model, point).register_forward_hook(hook)
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device, torch.float32))
            batches += 1
    finally:
        handle.remove()
        model.train(was_training)
    if count[0] != batches:
        raise PoisonlabError(f"module '{point}' runs {count[0] / batches:g} times per forward pass; pass mask_at "
                             "naming a module that runs once (e.g. the block holding the layer)")
    mean = (torch.stack(sums).sum(0) / count[1]).float()
    return mean, torch.stack(maxes).amax(0)


def channel_means(model: nn.Module, layer: str | None, clean_x: torch.Tensor, batch_size: int = 2048,
                  device: torch.device | str = "cpu", mask_at: str | None = None,
                  kind: LayerKind = "conv") -> torch.Tensor:
    """Mean activation of each channel of conv ``layer`` (each unit of a hidden Linear layer with
    ``kind="linear"``) on clean inputs, at its activation point."""
    layer = resolve_layer(model, layer, kind)
    channels = _width(get_layer(model, layer))
    return channel_stats(model, activation_point(model, layer, mask_at, kind), clean_x, batch_size, device,
                         channels)[0]


def prune_order(model: nn.Module, layer: str | None, clean_x: torch.Tensor, batch_size: int = 2048,
                device: torch.device | str = "cpu", mask_at: str | None = None, kind: LayerKind = "conv") -> list[int]:
    """Channels (units) of ``layer`` by increasing mean clean activation (Liu et al. 2018, Sec. 3.1);
    ties keep channel order."""
    means = channel_means(model, layer, clean_x, batch_size, device, mask_at, kind)
    return torch.argsort(means, stable=True).tolist()
