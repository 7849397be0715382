"""Transfer learning from a (backdoored) teacher, and backdoor strengthening.

BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733, Section 5) show that a backdoor
planted in a U.S. traffic-sign network survives when a user retrains it for Swedish
signs: the student keeps the teacher's convolutional layers and gets new fully connected
layers for the new classes. Section 5.3 strengthens the backdoor before the transfer by
multiplying the input weights of the neurons that fire on the trigger by a factor k.

* :func:`build_student`: a deep copy of the teacher with a new head, in
  ``"feature-extractor"`` mode (the conv layers frozen, as in the paper) or
  ``"fine-tune"`` mode (every layer trained).
* :func:`freeze_features` / :func:`unfreeze`, :func:`replace_head`, :func:`head_layers`.
* :func:`strengthen`: a copy with chosen conv channels' input weights times k.
* :class:`TransferConfig` and :func:`train_student` for the experiment runner.

Design notes:

* The *head* is everything after the last ``nn.Flatten`` of an ``nn.Sequential`` model
  (BadNetMNIST, DigitsCNN, SmallCNN, MLP), or the ``fc`` layer of a ResNet-style model.
  Everything else is the *feature extractor*.
* Frozen batch norm: ``requires_grad=False`` stops the optimiser, but a batch-norm layer
  in training mode would still normalise with batch statistics and update its running
  mean/variance, so the "frozen" features would drift. :func:`freeze_features` therefore
  gives every batch-norm layer of the feature extractor an instance-level ``train()``
  that always switches it to eval mode: ``model.train()`` (which the trainer calls)
  leaves those layers in eval mode, using and keeping their running statistics. The
  override is an instance attribute, so it survives ``copy.deepcopy``; :func:`unfreeze`
  removes it. (A BN layer built with ``track_running_stats=False`` has no running
  statistics and keeps normalising per batch even in eval mode.)
* Functions that return a model (:func:`replace_head`, :func:`build_student`,
  :func:`strengthen`) return a new copy and never modify their input;
  :func:`freeze_features` and :func:`unfreeze` change the model in place (like
  ``model.eval()``) and return it for chaining.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checks import MAX_COUNT, MAX_EPOCHS, MAX_LR, check_model_options, need_int, need_number
from .data.base import Dataset
from .errors import PoisonlabError, did_you_mean, shown
from .models.layers import conv_layers, get_layer
from .train import TrainConfig, TrainResult, train_model

Mode = Literal["feature-extractor", "fine-tune"]
MODES: tuple[str, ...] = ("feature-extractor", "fine-tune")


# ----------------------------------------------------------------------------- head / features


def head_layers(model: nn.Module) -> list[str]:
    """Top-level names of the fully connected head (see the module notes for the rule)."""
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        flat = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Flatten)]
        if flat:
            names = [n for n, _ in children[flat[-1] + 1:]]
            if names:
                return names
    if isinstance(model._modules.get("fc"), nn.Module):
        return ["fc"]
    raise PoisonlabError(f"cannot find the fully connected head of {type(model).__name__}: expected an "
                         f"nn.Sequential with a Flatten layer followed by the classifier, or a model with an `fc` layer")


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen batch-norm layer: always eval mode (running stats used, never updated)."""
    return nn.Module.train(self, False)


def _is_held(module: nn.Module) -> bool:
    return "train" in module.__dict__


def freeze_features(model: nn.Module) -> nn.Module:
    """Freeze the feature extractor in place (BadNets Sec. 5: only the new FC layers are trained).

    Every parameter outside the head gets ``requires_grad=False`` (the trainer optimises
    only trainable parameters) and every batch-norm layer outside the head stays in eval
    mode from now on, so its running statistics neither change nor get replaced by batch
    statistics. The head is left as it is. Returns ``model``.
    """
    head = head_layers(model)
    if not any(not _under(n, head) for n in conv_layers(model)):
        raise PoisonlabError(f"{type(model).__name__} has no convolutional feature extractor to freeze; "
                             f"use mode 'fine-tune' or a CNN")
    return _freeze_outside(model, head)


def _freeze_outside(model: nn.Module, keep: list[str]) -> nn.Module:
    """Freeze every parameter outside the modules ``keep`` (leaving those as they are) and hold
    every batch norm outside them in eval mode; in place."""
    for name, p in model.named_parameters():
        if not _under(name, keep):
            p.requires_grad_(False)
    for name, m in model.named_modules():
        if name and not _under(name, keep) and isinstance(m, _BatchNorm):
            m.train = types.MethodType(_frozen_train, m)  # type: ignore[method-assign]
            m.train(False)
    return model


def freeze_all_but_last_linear(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the last ``nn.Linear``'s, in place (transfer learning with
    a retrained last layer, as in Jagielski et al. 2021, Sec. 5.3); batch norms stay in eval
    mode as in :func:`freeze_features`. Works for MLPs too. Returns ``model``."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PoisonlabError(f"{type(model).__name__} has no nn.Linear layer to retrain")
    return _freeze_outside(model, linears[-1:])


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_features` in place: every parameter trainable, batch norms follow ``train()``."""
    for p in model.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        if _is_held(m):
            del m.__dict__["train"]
            m.train(model.training)
    return model


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad=False``."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


# ----------------------------------------------------------------------------- new head


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise PoisonlabError(f"num_classes must be a whole number >= 1, got {shown(num_classes)}")
    return num_classes


def _check_hidden(hidden: object, where: str = "hidden") -> list[int] | None:
    if hidden is None:
        return None
    ok = isinstance(hidden, (list, tuple)) and all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
    if not ok:
        raise PoisonlabError(f"{where} must be null (copy the teacher's head layout) or a list of positive "
                             f"widths like [256], got {shown(hidden)}")
    return list(hidden)  # type: ignore[arg-type]


def _linear_stack(in_features: int, hidden: list[int], num_classes: int) -> list[tuple[str, nn.Module]]:
    """``fc1, relu_fc1, ..., fc{n+1}``: hidden Linear+ReLU layers, then the classifier."""
    layers: list[tuple[str, nn.Module]] = []
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu_fc{i}", nn.ReLU())]
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    return layers


def _mirror_head(names: list[str], old: list[nn.Module], num_classes: int) -> list[tuple[str, nn.Module]]:
    """The old head's layout (dropout etc. included), freshly initialised, with ``num_classes`` outputs."""
    head = nn.Sequential(OrderedDict((n, copy.deepcopy(m)) for n, m in zip(names, old)))
    for m in head.modules():
        if m is not head and hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    last_name, last = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, child = last_name.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    setattr(parent, child, nn.Linear(last.in_features, num_classes, bias=last.bias is not None))
    return list(head.named_children())


def replace_head(model: nn.Module, num_classes: int, hidden: list[int] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with new, freshly initialised fully connected layers (BadNets Sec. 5.2).

    ``hidden=None`` copies the layout of the old head (e.g. SmallCNN's fc 256 + dropout)
    with new weights and ``num_classes`` outputs; a list gives new ``Linear+ReLU`` layers
    of those widths (``[]``: one linear classifier). For ``nn.Sequential`` models the
    layers after ``flatten`` are replaced; for ResNet-style models ``.fc``. The new
    layers are initialised from ``seed`` without touching the global random state.
    """
    num_classes = _check_num_classes(num_classes)
    hidden = _check_hidden(hidden)
    student = copy.deepcopy(model)
    names = head_layers(student)
    old = [student._modules[n] for n in names]
    linears = [m for o in old for m in o.modules() if isinstance(m, nn.Linear)]  # type: ignore[union-attr]
    if not linears:
        raise PoisonlabError(f"the head of {type(model).__name__} ({', '.join(names)}) has no nn.Linear layer to replace")
    ref = linears[0].weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hidden is None:
            new = _mirror_head(names, old, num_classes)  # type: ignore[arg-type]
        else:
            new = _linear_stack(linears[0].in_features, hidden, num_classes)
    if not isinstance(student, nn.Sequential) and hidden is not None:
        new = [(names[0], nn.Sequential(OrderedDict(new)))]
    for n in names:
        delattr(student, n)
    for n, m in new:
        student.add_module(n, m.to(ref.device, ref.dtype))
    return student


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        hint = did_you_mean(mode, MODES) if isinstance(mode, str) else ""
        raise PoisonlabError(f"unknown transfer mode {shown(mode)}{hint}; use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def build_student(teacher: nn.Module, num_classes: int, mode: Mode = "feature-extractor",
                  hidden: list[int] | None = None, seed: int = 0) -> nn.Module:
    """The student network of BadNets Sec. 5: a copy of ``teacher`` with a new head.

    ``"feature-extractor"``: the teacher's conv layers (and batch norms) are frozen and
    only the new fully connected layers train, as in the paper. ``"fine-tune"``: every
    layer trains. The teacher is not modified.
    """
    mode = _check_mode(mode)
    student = replace_head(teacher, num_classes, hidden, seed)
    unfreeze(student)
    if mode == "feature-extractor":
        freeze_features(student)
    return student


# ----------------------------------------------------------------------------- strengthening


def _check_k(k: object) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise PoisonlabError(f"strengthening factor k must be a finite number > 0, got {shown(k)}")
    return float(k)


def conv_layer(model: nn.Module, layer: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` called ``layer``; another kind of layer is a one-line error listing the conv layers."""
    module = get_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        convs = conv_layers(model)
        raise PoisonlabError(f"layer '{layer}' is a {type(module).__name__}, not a convolution; "
                             f"pick one of: {', '.join(convs) if convs else '(the model has no conv layer)'}")
    return module


def _channel_list(channels: object) -> list[int]:
    """A non-empty list of distinct whole numbers >= 0, or a one-line error."""
    ok = isinstance(channels, (list, tuple)) and len(channels) > 0 and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels)
    if not ok:
        raise PoisonlabError(f"channels must be a non-empty list of channel indices >= 0, got {shown(channels)}")
    if len(set(channels)) != len(channels):  # type: ignore[arg-type]
        raise PoisonlabError(f"channels must be distinct, got {list(channels)}")  # type: ignore[call-overload]
    return list(channels)  # type: ignore[call-overload]


def check_channels(channels: object, count: int, layer: str) -> list[int]:
    """Validate a non-empty list of distinct channel indices in ``0..count-1`` of ``layer``."""
    if isinstance(channels, (list, tuple)):
        bad = [c for c in channels if isinstance(c, int) and not isinstance(c, bool) and not 0 <= c < count]
        if bad:
            raise PoisonlabError(f"channel {bad[0]} is out of range: layer '{layer}' has {count} channels "
                                 f"(0..{count - 1})")
    return _channel_list(channels)


def strengthen(model: nn.Module, layer: str, channels: list[int], k: float, include_bias: bool = False) -> nn.Module:
    """A copy of ``model`` whose backdoor neurons fire k times harder (BadNets Sec. 5.3).

    The input weights of output channels ``channels`` of conv layer ``layer``
    (``weight[c]``, all input channels and kernel taps) are multiplied by ``k``; every
    other tensor is unchanged. Following the paper, which scales the neurons' input
    weights, the bias is left alone unless ``include_bias=True`` (then ``bias[c]`` is
    scaled too, which makes the pre-activation exactly ``k`` times the original).

    A batch norm right after the conv (SmallCNN, ResNet) only preserves the effect while
    it uses its running statistics: that holds in eval mode and for a student in
    ``"feature-extractor"`` mode, whereas re-training that batch norm ("fine-tune")
    normalises the factor away.
    """
    k = _check_k(k)
    conv = conv_layer(model, layer)
    idx = torch.tensor(check_channels(channels, conv.out_channels, layer), device=conv.weight.device)
    out = copy.deepcopy(model)
    conv = conv_layer(out, layer)
    with torch.no_grad():
        conv.weight[idx] = conv.weight[idx] * k
        if include_bias and conv.bias is not None:
            conv.bias[idx] = conv.bias[idx] * k
    return out


# ----------------------------------------------------------------------------- config + training


MAX_FACTORS = 100
MAX_K = 1e6


@dataclass
class TransferConfig:
    """``transfer:`` settings for the BadNets Sec. 5 experiment.

    ``mode``: ``feature-extractor`` (paper: conv layers frozen) or ``fine-tune``.
    ``epochs``/``lr``: the student's training (other settings come from ``train:``).
    ``hidden``: widths of the student's new hidden FC layers (null: the teacher's layout).
    ``strengthen_k``: factors k of Sec. 5.3 to sweep (1 = no strengthening).
    ``strengthen_layer``: conv layer to strengthen (null: the last conv layer).
    ``strengthen_channels``: its channels (null: those flagged by the backdoor-neuron analysis).
    ``teacher_fraction``: share of each class's training images for the teacher; the
    student trains on the rest.
    ``task``: the student's new task: ``swedish`` regroups GTSRB into the four Swedish
    sign categories (:mod:`poisonlab.data.gtsrb_groups`); ``same`` keeps the classes
    (any data set: transfer to fresh images of the same task).
    """

    mode: Mode = "feature-extractor"
    epochs: int = 10
    lr: float = 0.01
    hidden: list[int] | None = None
    strengthen_k: list[float] = field(default_factory=lambda: [1.0])
    strengthen_layer: str | None = None
    strengthen_channels: list[int] | None = None
    teacher_fraction: float = 0.5
    task: Literal["swedish", "same"] = "swedish"

    def validate(self) -> None:
        """Raise a one-line :class:`PoisonlabError` for the first bad setting."""
        try:
            _check_mode(self.mode)
        except PoisonlabError as e:
            raise PoisonlabError(f"transfer.mode: {e}") from None
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise PoisonlabError(f"transfer.epochs must be a whole number >= 1, got {shown(self.epochs)}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (0 < self.lr < math.inf):
            raise PoisonlabError(f"transfer.lr must be a finite number > 0, got {shown(self.lr)}")
        need_int(self.epochs, "transfer.epochs", 1, MAX_EPOCHS)
        need_number(self.lr, "transfer.lr", 0, MAX_LR, low_open=True)
        _check_hidden(self.hidden, "transfer.hidden")
        if self.hidden is not None:
            check_model_options({"hidden": self.hidden}, "transfer")
        if isinstance(self.strengthen_k, (list, tuple)) and len(self.strengthen_k) > MAX_FACTORS:
            raise PoisonlabError(f"transfer.strengthen_k lists {len(self.strengthen_k)} factors; at most {MAX_FACTORS}")
        if not isinstance(self.strengthen_k, (list, tuple)) or not self.strengthen_k:
            raise PoisonlabError(f"transfer.strengthen_k must be a non-empty list of factors like [1, 10, 20], "
                                 f"got {shown(self.strengthen_k)}")
        for k in self.strengthen_k:
            try:
                _check_k(k)
            except PoisonlabError:
                raise PoisonlabError(f"transfer.strengthen_k: every factor must be a finite number > 0, got {shown(k)}") from None
            need_number(k, "transfer.strengthen_k", 0, MAX_K, low_open=True, what="every factor")
        if self.strengthen_layer is not None and (not isinstance(self.strengthen_layer, str) or not self.strengthen_layer):
            raise PoisonlabError(f"transfer.strengthen_layer must be a layer name or null, got {shown(self.strengthen_layer)}")
        if self.strengthen_channels is not None:
            try:
                _channel_list(self.strengthen_channels)
            except PoisonlabError:
                raise PoisonlabError(f"transfer.strengthen_channels must be null or a non-empty list of distinct "
                                     f"channel indices >= 0, got {shown(self.strengthen_channels)}") from None
            for c in self.strengthen_channels:
                need_int(c, "transfer.strengthen_channels", 0, MAX_COUNT, "channel indices")
        if self.task not in ("swedish", "same"):
            raise PoisonlabError(f"transfer.task must be 'swedish' or 'same', got {shown(self.task)}")
        tf = self.teacher_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1:
            raise PoisonlabError(f"transfer.teacher_fraction must be a number in (0, 1), got {shown(tf)}")

    def train_config(self, base: TrainConfig | None = None) -> TrainConfig:
        """The student's :class:`TrainConfig`: ``base`` (default settings if None) with this epochs and lr."""
        return dataclasses.replace(base or TrainConfig(), epochs=self.epochs, lr=float(self.lr))


def train_student(teacher: nn.Module, train: Dataset, cfg: TransferConfig, base: TrainConfig | None = None,
                  seed: int = 0, device: torch.device | str = "cpu",
                  val: Dataset | None = None) -> tuple[nn.Module, TrainResult]:
    """Build the student for ``train``'s classes and train it (BadNets Sec. 5.2); the teacher is untouched."""
    cfg.validate()
    student = build_student(teacher, train.num_classes, cfg.mode, cfg.hidden, seed)
    result = train_model(student, train, cfg.train_config(base), seed=seed, device=device, val=val, desc="student")
    return student, result
