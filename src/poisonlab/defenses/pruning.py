"""Fine-Pruning (Liu, Dolan-Gavitt, Garg, RAID 2018, arXiv 1805.12185).

A backdoored network tends to keep its backdoor in neurons that stay *dormant* on clean
inputs. The defender (Section 3.1) prunes the channels of a late convolution layer in
increasing order of their mean activation on clean validation data, and stops before the
validation accuracy falls more than ``max_drop`` below the unpruned model's (4 points in
the paper). Fine-pruning (Section 3.3) then fine-tunes the pruned network on the clean
validation data with a small learning rate; "fine-tuning" alone is the paper's baseline.

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
Nothing before the point changes as channels are pruned, so :func:`pruning_curve` computes
the point's output once and runs only the rest of the network per step where the model
can be cut there (:func:`split_at`: the plain ``nn.Sequential`` models).

The defense entry points (:func:`prune_defense`, :func:`fine_tune_defense`,
:func:`fine_prune`) never modify the model they are given: they return a defended deep
copy. The building blocks (:class:`ChannelMask`, :func:`fine_tune`) act on the model
passed, as their names say; :func:`pruning_curve` leaves the model as it found it (its
masks are temporary) and :meth:`PruningResult.apply` attaches the chosen mask.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from .. import progress
from ..attacks.base import AttackTestSet
from ..data.base import Dataset
from ..checks import MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_LR, need_int, need_number
from ..errors import PoisonlabError, shown
from ..metrics import accuracy
from ..models.layers import conv_layers, get_layer
from ..report import to_csv
from ..train import TrainConfig, TrainResult, predict, predict_logits, train_model

#: modules that act element-wise and keep the channel count: part of a conv's activation block
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)

#: what :func:`resolve_layer` prunes: output channels of a Conv2d, or hidden units of a Linear layer
LayerKind = Literal["conv", "linear"]

#: two accuracies closer than this count as equal in the stop rule (k/N rounding)
_TOL = 1e-9

#: most bytes of cached activation-point outputs :func:`pruning_curve` keeps (CPU, float32)
FEATURE_CACHE_BYTES = 2 * 1024 ** 3


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

    def __enter__(self) -> "ChannelMask":
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


# -- the pruning curve and the stop rule -------------------------------------------
def step_sizes(channels: int, step: int | float) -> list[int]:
    """Numbers of pruned channels at each step: 0, s, 2s, ... and finally all ``channels``.

    An int ``step`` prunes that many channels per step; a float in (0, 1] that share of
    the layer (rounded, at least one channel).
    """
    check_step(step)
    size = step if isinstance(step, int) else max(1, round(step * channels))
    return list(range(0, channels, size)) + [channels]


def choose_stop(val_accs: Sequence[float], base_acc: float, max_drop: float) -> int:
    """Index of the step to keep: the last one before the first whose validation accuracy
    is more than ``max_drop`` below ``base_acc`` (Liu et al. 2018, Sec. 3.1: prune until the
    validation accuracy drops by more than the threshold). Step 0 (nothing pruned) is kept
    even if it fails.

    >>> choose_stop([0.9, 0.9, 0.87, 0.85, 0.89], 0.9, 0.04)
    2
    """
    floor = base_acc - max_drop - _TOL
    for i, acc in enumerate(val_accs):
        if acc < floor:
            return max(i - 1, 0)
    return len(val_accs) - 1


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              device: torch.device | str) -> float:
    """Share of ``x`` predicted as ``y`` by ``model`` (the one evaluation the curve makes per
    data set and step: the whole model on the inputs, or the part after the activation
    point on that point's cached outputs)."""
    return accuracy(predict(model, x, batch_size, device), y)


@dataclass
class PruningResult:
    """The pruning curve of one layer and the stop the validation data chose."""

    layer: str
    point: str
    channels: int
    order: list[int]
    means: list[float]
    rows: list[dict[str, Any]]
    n_pruned: int
    base_val_acc: float
    max_drop: float
    kind: LayerKind = "conv"

    @property
    def fraction_pruned(self) -> float:
        return self.n_pruned / self.channels

    @property
    def pruned_channels(self) -> list[int]:
        """The channels the stop rule prunes (in pruning order)."""
        return self.order[:self.n_pruned]

    @property
    def chosen_row(self) -> dict[str, Any]:
        return next(r for r in self.rows if r["n_pruned"] == self.n_pruned)

    def apply(self, model: nn.Module) -> ChannelMask:
        """Attach the chosen mask to ``model`` (the model the curve was measured on, or a copy)."""
        mask = ChannelMask(model, self.layer, self.point, self.kind)
        mask.set(self.pruned_channels)
        return mask

    def to_csv(self) -> str:
        return to_csv(self.rows)

    def write_csv(self, path: str | Path) -> None:
        """The per-step table (n_pruned, fraction_pruned, val_acc, clean_acc, attack_success)."""
        Path(path).write_text(self.to_csv())

    def summary(self) -> dict[str, Any]:
        row = self.chosen_row
        return {"layer": self.layer, "point": self.point, "channels": self.channels, "n_pruned": self.n_pruned,
                "fraction_pruned": self.fraction_pruned, "base_val_acc": self.base_val_acc,
                "max_drop": self.max_drop, "val_acc": row["val_acc"], "clean_acc": row["clean_acc"],
                "attack_success": row["attack_success"]}


def pruning_curve(model: nn.Module, layer: str | None, val: Dataset, test_clean: Dataset | None = None,
                  attack_set: AttackTestSet | None = None, step: int | float = 1, max_drop: float = 0.04,
                  batch_size: int = 2048, device: torch.device | str = "cpu", mask_at: str | None = None,
                  full_curve: bool = True, kind: LayerKind = "conv") -> PruningResult:
    """Prune ``layer`` step by step in increasing clean-activation order (Liu et al. 2018,
    Sec. 3.1, Fig. 4) and pick the stop from the **validation** accuracy only.

    Each row records ``val_acc`` and, for reporting, ``clean_acc`` on ``test_clean`` and
    ``attack_success`` on ``attack_set`` (``None`` when not given). The order is measured
    on ``val.x``. With ``full_curve=False`` the sweep ends at the first step past the
    threshold. The model is moved to ``device`` and otherwise left as it was (the sweep's
    mask is removed, train/eval flags are restored); call ``result.apply(model)`` to prune it.

    Pruning changes nothing before the activation point, so where :func:`split_at` can cut
    the model there, the point's output is computed once per data set and each step runs
    only the rest of the network on it (same batches, same rows: the same accuracies as
    full forward passes); otherwise every step runs the whole model.

    ``kind="linear"`` prunes the hidden units of a Linear layer instead (``layer=None``: the
    last hidden one); "channel" below then reads "unit".
    """
    check_max_drop(max_drop)
    check_step(step)
    if val is None or len(val) == 0:
        raise PoisonlabError("Fine-Pruning needs a clean validation split; set data.val_fraction > 0")
    layer = resolve_layer(model, layer, kind)
    model.to(device)
    point = activation_point(model, layer, mask_at, kind)
    channels = _width(get_layer(model, layer))
    modes = {m: m.training for m in model.modules()}
    rows: list[dict[str, Any]] = []
    mask: ChannelMask | None = None
    try:
        means = channel_stats(model, point, val.x, batch_size, device, channels)[0]
        order = torch.argsort(means, stable=True).tolist()
        sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"val_acc": (val.x, val.y)}
        if test_clean is not None and len(test_clean):
            sets["clean_acc"] = (test_clean.x, test_clean.y)
        if attack_set is not None and len(attack_set.x):
            # untargeted (random-target) attacks succeed on any wrong label: 1 - accuracy on the true labels
            sets["attack_success"] = (attack_set.x, attack_set.true if attack_set.untargeted else attack_set.target)
        untargeted = attack_set is not None and attack_set.untargeted
        cache = _PointCache.build(model, point, sets, batch_size, device)
        if cache is None:  # every step runs the whole model, with the sweep's mask attached
            mask = ChannelMask(model, layer, point, kind)
            net, inputs, prune = model, {k: x for k, (x, _) in sets.items()}, mask.set
        else:
            net, inputs, prune = cache.tail, cache.outputs, cache.prune
        sizes = step_sizes(channels, step)
        with progress.bar(f"prune {layer}", len(sizes), unit="step") as bar:
            for n in sizes:
                prune(order[:n])
                row: dict[str, Any] = {"n_pruned": n, "fraction_pruned": n / channels,
                                       "val_acc": None, "clean_acc": None, "attack_success": None}
                for key, (_, y) in sets.items():
                    row[key] = _accuracy(net, inputs[key], y, batch_size, device)
                if untargeted and row["attack_success"] is not None:
                    row["attack_success"] = 1 - row["attack_success"]
                rows.append(row)
                bar.advance(1, info=f"val {row['val_acc']:.3f}")
                if not full_curve and row["val_acc"] < rows[0]["val_acc"] - max_drop - _TOL:
                    break
    finally:
        if mask is not None:
            mask.remove()
        for m, flag in modes.items():
            m.training = flag
    base = rows[0]["val_acc"]
    chosen = rows[choose_stop([r["val_acc"] for r in rows], base, max_drop)]["n_pruned"]
    return PruningResult(layer, point, channels, order, means.tolist(), rows, chosen, base, max_drop, kind)


def split_at(model: nn.Module, point: str) -> tuple[nn.Sequential, list[nn.Module]] | None:
    """``model`` cut after module ``point``: (head up to and including ``point``, the modules after it).

    Applies only when running the head and then the rest in order is exactly ``model``'s
    forward pass: ``model`` is a plain ``nn.Sequential`` (its own ``forward`` not
    overridden, no hooks of its own), ``point`` is one of its direct children, and that
    module occurs once among them. Otherwise (e.g. ResNet-18's ``layer4.1``, a custom
    ``forward``) returns ``None``, and callers run the whole model.
    """
    if not _is_plain_sequential(model) or "." in point or point not in model._modules:
        return None
    if model._forward_hooks or model._forward_pre_hooks:
        return None
    names = list(model._modules)  # what Sequential.forward runs, in order (children() drops repeats)
    modules = list(model._modules.values())
    i = names.index(point)
    if sum(m is modules[i] for m in modules) != 1:
        return None
    return nn.Sequential(*modules[:i + 1]), modules[i + 1:]  # type: ignore[arg-type]


class _PointCache:
    """The activation point's output on each data set of a pruning curve, computed once, and
    the network after the point (Liu et al. 2018 prune only there, so nothing before it
    changes from step to step).

    Pruning a channel zeroes it in the cached outputs, in place: the exact zeros
    :class:`ChannelMask` writes into the point's output. The curve only ever adds channels.
    """

    def __init__(self, tail: nn.Sequential, outputs: dict[str, torch.Tensor]) -> None:
        self.tail = tail
        self.outputs = outputs
        self.pruned: set[int] = set()

    @classmethod
    def build(cls, model: nn.Module, point: str, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
              batch_size: int, device: torch.device | str) -> _PointCache | None:
        """Run the model up to ``point`` on the inputs of ``sets`` (eval mode; float32 on the
        CPU), or ``None`` when it cannot be cut there (:func:`split_at`) or the outputs
        would take more than :data:`FEATURE_CACHE_BYTES`.

        Rows are batched as a full forward pass batches them (same ``batch_size``, same
        input memory format), so the tail sees the same batches and gives the same
        predictions. Leaves the head's modules in eval mode (the curve restores them).
        """
        split = split_at(model, point)
        if split is None:
            return None
        head, rest = split
        head.eval()
        with torch.no_grad():
            probe = head(sets["val_acc"][0][:1].to(device, torch.float32))
        if probe.numel() * 4 * sum(len(x) for x, _ in sets.values()) > FEATURE_CACHE_BYTES:
            return None
        outputs = {key: predict_logits(head, x, batch_size, device, desc=f"cache {point}")
                   for key, (x, _) in sets.items()}
        return cls(nn.Sequential(*rest), outputs)

    def prune(self, channels: Iterable[int]) -> None:
        """Make ``channels`` pruned: a superset of the channels pruned so far."""
        chosen = set(channels)
        if not chosen >= self.pruned:
            raise PoisonlabError("a cached pruning curve can only prune more channels")
        new = torch.tensor(sorted(chosen - self.pruned), dtype=torch.long)
        if len(new):
            for out in self.outputs.values():
                out.index_fill_(1, new, 0.0)
        self.pruned = chosen


def plot_pruning_curve(path: str | Path, result: PruningResult) -> None:
    """Clean accuracy and attack success against the fraction pruned, with the chosen stop
    (Liu et al. 2018, Fig. 4); validation accuracy is drawn dashed."""
    from ..report import pyplot

    plt = pyplot()
    xs = [r["fraction_pruned"] for r in result.rows]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label, style in (("clean_acc", "clean accuracy", "-"), ("attack_success", "attack success", "-"),
                              ("val_acc", "validation accuracy", "--")):
        ys = [r[key] for r in result.rows]
        if any(v is not None for v in ys):
            ax.plot(xs, [math.nan if v is None else v for v in ys], style, marker=".", markersize=3, label=label)
    ax.axvline(result.fraction_pruned, color="grey", linestyle=":",
               label=f"stop: {result.n_pruned}/{result.channels} pruned")
    ax.set_xlabel(f"fraction of channels pruned ({result.layer})")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- fine-tuning -----------------------------------------------------------------------
def fine_tune(model: nn.Module, val: Dataset, cfg: TrainConfig, seed: int = 0,
              device: torch.device | str = "cpu") -> TrainResult:
    """Fine-tune ``model`` in place on clean validation data (Liu et al. 2018, Sec. 3.3).

    Masks attached to the model stay in force: a pruned channel is zero in every forward
    pass and passes no gradient, so it stays pruned.
    """
    if val is None or len(val) == 0:
        raise PoisonlabError("fine-tuning needs a clean validation split; set data.val_fraction > 0")
    return train_model(model, val, cfg, seed=seed, device=device, desc="fine-tune")


# -- the defense ------------------------------------------------------------------------
@dataclass
class FinePruningConfig:
    """``defense:`` keys of pruning, fine-tuning and fine-pruning.

    ``label`` names this entry in tables and files (default: the defense's name), so that one
    defense can be listed twice with different settings. ``layer: null`` is the model's last conv layer; ``mask_at`` overrides the activation
    point; ``step`` is channels (int) or a share of the layer (float) per curve step.
    Fine-tuning uses SGD with a constant small learning rate on the validation split.
    """

    name: str = "fine-pruning"
    label: str | None = None
    layer: str | None = None
    mask_at: str | None = None
    max_drop: float = 0.04
    step: int | float = 1
    full_curve: bool = True
    fine_tune_epochs: int = 10
    fine_tune_lr: float = 0.01
    fine_tune_optimizer: Literal["sgd", "adam"] = "sgd"
    fine_tune_momentum: float = 0.9
    fine_tune_weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 2048

    def validate(self, model: nn.Module | None = None) -> None:
        """Range checks; with ``model``, also that ``layer`` and ``mask_at`` exist."""
        check_label(self.label)
        check_max_drop(self.max_drop)
        check_step(self.step)
        need_int(self.fine_tune_epochs, "defense.fine_tune_epochs", 1, MAX_EPOCHS)
        need_number(self.fine_tune_lr, "defense.fine_tune_lr", 0, MAX_LR, low_open=True)
        need_number(self.fine_tune_momentum, "defense.fine_tune_momentum", 0, 1, high_open=True)
        need_number(self.fine_tune_weight_decay, "defense.fine_tune_weight_decay", 0, 1)
        need_int(self.batch_size, "defense.batch_size", 1, MAX_BATCH)
        need_int(self.eval_batch_size, "defense.eval_batch_size", 1, MAX_BATCH)
        self.fine_tune_config().validate("defense.fine_tune")
        if model is not None:
            layer = resolve_layer(model, self.layer)
            activation_point(model, layer, self.mask_at)

    def fine_tune_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.fine_tune_epochs, batch_size=self.batch_size, optimizer=self.fine_tune_optimizer,
                           lr=self.fine_tune_lr, momentum=self.fine_tune_momentum,
                           weight_decay=self.fine_tune_weight_decay, schedule="constant",
                           eval_batch_size=self.eval_batch_size)


def check_label(label: str | None) -> None:
    """One-line error unless ``label`` is null or a short name of letters, digits, ``-``, ``_``, ``.``."""
    import re

    if label is not None and not (isinstance(label, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", label)):
        raise PoisonlabError(f"defense.label must be 1-40 letters, digits, '-', '_' or '.', got {shown(label)} "
                             f"(it names the table row and the curve files)")


def check_max_drop(max_drop: float, where: str = "defense.max_drop") -> None:
    """One-line error unless ``max_drop`` is a number in [0, 1)."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 1:
        raise PoisonlabError(f"{where} must be in [0, 1) (a drop in validation accuracy, 0.04 = 4 points), "
                             f"got {shown(max_drop)}")


def check_step(step: int | float, where: str = "defense.step") -> None:
    """One-line error unless ``step`` is an int in 1..1000000 or a float in (0, 1]."""
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise PoisonlabError(f"{where} must be a number of channels or a fraction, got {shown(step)}")
    if isinstance(step, int) and step < 1:
        raise PoisonlabError(f"{where} must be >= 1 channel, got {step}")
    if isinstance(step, int) and step > MAX_COUNT:
        raise PoisonlabError(f"{where} must be at most {MAX_COUNT} channels (1..{MAX_COUNT}), got {shown(step)}")
    if isinstance(step, float) and not 0 < step <= 1:
        raise PoisonlabError(f"{where} as a fraction of the layer must be in (0, 1], got {step}")


@dataclass
class DefenseOutcome:
    """A defended copy of the model and what the defense did."""

    model: nn.Module
    mask: ChannelMask | None = None
    curve: PruningResult | None = None
    fine_tune: TrainResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.curve.summary()) if self.curve else {}
        if self.fine_tune is not None:
            out["fine_tune_epochs"] = len(self.fine_tune.history)
            last = self.fine_tune.history[-1] if self.fine_tune.history else {}
            out["fine_tune_loss"] = last.get("loss")
        return out | self.extra


def prune_defense(model: nn.Module, cfg: FinePruningConfig, val: Dataset, test_clean: Dataset | None = None,
                  attack_set: AttackTestSet | None = None, seed: int = 0,
                  device: torch.device | str = "cpu") -> DefenseOutcome:
    """The pruning defense (Sec. 3.1): a pruned copy of ``model``; ``model`` is untouched."""
    cfg.validate(model)
    defended = copy.deepcopy(model)
    curve = pruning_curve(defended, cfg.layer, val, test_clean, attack_set, cfg.step, cfg.max_drop,
                          cfg.eval_batch_size, device, cfg.mask_at, cfg.full_curve)
    return DefenseOutcome(defended, curve.apply(defended), curve)


def fine_tune_defense(model: nn.Module, cfg: FinePruningConfig, val: Dataset, test_clean: Dataset | None = None,
                      attack_set: AttackTestSet | None = None, seed: int = 0,
                      device: torch.device | str = "cpu") -> DefenseOutcome:
    """The fine-tuning baseline (Sec. 3.2): a copy of ``model`` fine-tuned on ``val``."""
    cfg.validate(model)
    defended = copy.deepcopy(model)
    return DefenseOutcome(defended, fine_tune=fine_tune(defended, val, cfg.fine_tune_config(), seed, device))


def fine_prune(model: nn.Module, cfg: FinePruningConfig, val: Dataset, test_clean: Dataset | None = None,
               attack_set: AttackTestSet | None = None, seed: int = 0,
               device: torch.device | str = "cpu") -> DefenseOutcome:
    """Fine-pruning (Sec. 3.3): prune with the validation stop rule, then fine-tune the
    pruned copy on ``val`` with the mask in place. ``model`` is untouched."""
    out = prune_defense(model, cfg, val, test_clean, attack_set, seed, device)
    out.fine_tune = fine_tune(out.model, val, cfg.fine_tune_config(), seed, device)
    return out
