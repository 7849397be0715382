"""Backdoor neurons: conv channels that fire on the trigger and stay quiet on clean inputs.

BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733, Sec. 5.3 and Fig. 8) find
neurons in the last convolutional layer of the U.S. BadNet whose activation rises
sharply when the trigger is present; strengthening them (:func:`poisonlab.transfer.strengthen`)
makes the backdoor survive transfer learning better.

What is measured (:func:`channel_activation_stats`): for each output channel of a conv
layer, the mean activation over images, rows and columns (N, H, W) on clean inputs and
on the same inputs with the trigger. The activation is read *after* the non-linearity:

* if the conv sits in an ``nn.Sequential`` (BadNetMNIST, SmallCNN, ResNet shortcuts),
  the output of the run ``conv -> [BatchNorm] -> [ReLU]`` that directly follows it;
* otherwise (ResNet-style blocks with a custom ``forward``), the conv output passed
  through the sibling batch norm named like the conv (``convN -> bnN``) and a ReLU when
  the parent module owns an ``nn.ReLU``. For the second conv of a residual block this
  leaves out the shortcut that is added before the ReLU (an approximation).

Channels are ranked by the difference (triggered mean - clean mean). The flagging rule
is in :func:`flag_backdoor_channels`. Use ``poisonlab.report.plot_first_layer_filters``
for first-layer filter pictures; :func:`plot_backdoor_neurons` draws the channel means.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import PoisonlabError
from ..models.layers import conv_layers
from ..transfer import conv_layer

Post = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ChannelStats:
    """Mean activation per channel of one conv layer, on clean and on triggered inputs."""

    layer: str
    read_at: str
    clean_mean: np.ndarray
    triggered_mean: np.ndarray
    n_clean: int
    n_triggered: int

    @property
    def num_channels(self) -> int:
        return len(self.clean_mean)

    @property
    def difference(self) -> np.ndarray:
        """Triggered mean minus clean mean, per channel."""
        return self.triggered_mean - self.clean_mean

    @property
    def ranking(self) -> np.ndarray:
        """Channel indices by difference, largest first (ties by channel index)."""
        return np.argsort(-self.difference, kind="stable")


def default_layer(model: nn.Module) -> str:
    """The last conv layer (where BadNets look for backdoor neurons)."""
    names = conv_layers(model)
    if not names:
        raise PoisonlabError(f"{type(model).__name__} has no convolution layer; backdoor-neuron analysis needs a CNN")
    return names[-1]


def _sequential_read(parent: nn.Sequential, prefix: str, child: str) -> tuple[str, Post]:
    """Name of the last module of ``conv -> [BN] -> [ReLU]`` in ``parent``; nothing applied after the hook."""
    names = list(parent._modules)
    chain = [child]
    j = names.index(child) + 1
    if j < len(names) and isinstance(parent._modules[names[j]], _BatchNorm):
        chain.append(names[j])
        j += 1
    if j < len(names) and isinstance(parent._modules[names[j]], nn.ReLU):
        chain.append(names[j])
    return prefix + chain[-1], lambda out: out


def read_point(model: nn.Module, layer: str) -> tuple[str, Post, str]:
    """(module to hook, function applied to its output, description) for ``layer``'s activations."""
    conv_layer(model, layer)
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    prefix = parent_name + "." if parent_name else ""
    if isinstance(parent, nn.Sequential):
        hooked, post = _sequential_read(parent, prefix, child)
        where = f"output of {hooked}" if hooked != layer else f"output of {layer} (no BN/ReLU follows it)"
        return hooked, post, where
    bn_name = "bn" + child[len("conv"):] if child.startswith("conv") else None
    bn = parent._modules.get(bn_name) if bn_name else None
    bn = bn if isinstance(bn, _BatchNorm) else None
    relu = any(isinstance(m, nn.ReLU) for m in parent.children())
    steps = [layer] + ([prefix + bn_name] if bn is not None else []) + (["relu"] if relu else [])  # type: ignore[operator]

    def post(out: torch.Tensor) -> torch.Tensor:
        out = bn(out) if bn is not None else out
        return F.relu(out) if relu else out

    return layer, post, " -> ".join(steps)


@torch.no_grad()
def _channel_means(model: nn.Module, hooked: str, post: Post, x: torch.Tensor, batch_size: int,
                   device: torch.device) -> np.ndarray:
    """Mean over (N, H, W) of the channels read at ``hooked`` (after ``post``), float64."""
    sums: list[torch.Tensor] = []
    cells = [0]

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        act = post(out).double()
        sums.append(act.sum(dim=(0, 2, 3)).cpu())
        cells[0] += act.shape[0] * act.shape[2] * act.shape[3]

    handle = model.get_submodule(hooked).register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device, torch.float32))
    finally:
        handle.remove()
        model.train(was_training)
    return (torch.stack(sums).sum(0) / max(cells[0], 1)).numpy()


def _check_images(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PoisonlabError(f"{name} must be a non-empty image batch (N, C, H, W), got {shape}")
    return x


def channel_activation_stats(model: nn.Module, layer: str | None, clean_x: torch.Tensor, triggered_x: torch.Tensor,
                             batch_size: int = 512, device: torch.device | str | None = None) -> ChannelStats:
    """Per-channel mean activation of conv ``layer`` on clean vs triggered images (BadNets Sec. 5.3).

    ``layer=None`` picks the last conv layer. ``triggered_x`` is usually
    ``trigger.apply(clean_x)``, but the two batches may differ in size. The model runs in
    eval mode (restored afterwards) on ``device`` (default: where its parameters are).
    """
    layer = default_layer(model) if layer is None else layer
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PoisonlabError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    clean_x = _check_images(clean_x, "clean_x")
    triggered_x = _check_images(triggered_x, "triggered_x")
    hooked, post, where = read_point(model, layer)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dev = torch.device(device)
    clean = _channel_means(model, hooked, post, clean_x, batch_size, dev)
    triggered = _channel_means(model, hooked, post, triggered_x, batch_size, dev)
    return ChannelStats(layer, where, clean, triggered, len(clean_x), len(triggered_x))


def _check_rule(z: float, clean_quantile: float, min_difference: float) -> None:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
        raise PoisonlabError(f"z must be a finite number >= 0, got {z!r}")
    if isinstance(clean_quantile, bool) or not isinstance(clean_quantile, (int, float)) or not 0 <= clean_quantile <= 1:
        raise PoisonlabError(f"clean_quantile must be a number in [0, 1], got {clean_quantile!r}")
    if isinstance(min_difference, bool) or not isinstance(min_difference, (int, float)) or not min_difference >= 0:
        raise PoisonlabError(f"min_difference must be a number >= 0, got {min_difference!r}")


def flag_backdoor_channels(stats: ChannelStats, z: float = 3.0, clean_quantile: float = 0.5,
                           min_difference: float = 0.0) -> list[int]:
    """Channels that fire on the trigger and stay quiet on clean data, strongest first.

    With ``d`` = triggered mean - clean mean over the layer's channels, channel ``c`` is
    flagged when all of these hold:

    1. it fires on triggers: ``d[c] > median(d) + z * std(d)`` (population std over
       channels; an outlier among its layer);
    2. it is quiet on clean data: ``clean_mean[c] <= quantile(clean_mean, clean_quantile)``;
    3. ``d[c] > min_difference`` (an absolute floor, default 0).

    No channel is flagged when all differences are equal. With few channels the largest
    reachable score is small (a single outlier among n channels scores at most
    n / sqrt(n - 1), about sqrt(n)), so lower ``z`` for layers with fewer than 10 channels.
    """
    _check_rule(z, clean_quantile, min_difference)
    d = stats.difference
    sigma = float(d.std())
    if not sigma > 0:
        return []
    fires = d > float(np.median(d)) + z * sigma
    quiet = stats.clean_mean <= float(np.quantile(stats.clean_mean, clean_quantile))
    keep = fires & quiet & (d > min_difference)
    return [int(c) for c in stats.ranking if keep[c]]


def backdoor_neuron_rows(stats: ChannelStats, flagged: list[int] | None = None,
                         top: int | None = None) -> list[dict[str, str]]:
    """Table rows, strongest difference first: channel | clean mean | triggered mean | difference | flagged.

    ``top`` keeps the first ``top`` rows (flagged channels are always kept).
    """
    flagged_set = set(flagged or [])
    order = [int(c) for c in stats.ranking]
    if top is not None:
        order = [c for i, c in enumerate(order) if i < top or c in flagged_set]
    return [{"channel": str(c), "clean mean": f"{stats.clean_mean[c]:.4f}",
             "triggered mean": f"{stats.triggered_mean[c]:.4f}", "difference": f"{stats.difference[c]:+.4f}",
             "flagged": "yes" if c in flagged_set else "no"} for c in order]


def plot_backdoor_neurons(path: Path | str, stats: ChannelStats, flagged: list[int] | None = None) -> None:
    """Clean vs triggered mean activation per channel (bars) and against each other (scatter).

    Flagged channels are drawn in red and labelled (cf. BadNets Fig. 8).
    """
    from ..report import pyplot

    plt = pyplot()
    flagged = list(flagged or [])
    channels = np.arange(stats.num_channels)
    colors = ["crimson" if c in flagged else "tab:orange" for c in channels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(7.0, 3.5 + 0.06 * len(channels)) + 3.5, 3.4),
                                   gridspec_kw={"width_ratios": [2, 1]})
    width = 0.42
    ax1.bar(channels - width / 2, stats.clean_mean, width, color="tab:gray", label="clean")
    ax1.bar(channels + width / 2, stats.triggered_mean, width, color=colors, label="triggered")
    ax1.set_xlabel("channel")
    ax1.set_ylabel("mean activation")
    ax1.legend(fontsize=8)
    ax1.margins(y=0.12)
    _label_flagged(ax1, flagged, channels + width / 2, stats.triggered_mean)
    ax2.scatter(stats.clean_mean, stats.triggered_mean, s=12, c=colors)
    hi = float(max(stats.clean_mean.max(), stats.triggered_mean.max(), 1e-12))
    lo = float(min(stats.clean_mean.min(), stats.triggered_mean.min(), 0.0))
    ax2.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--")
    _label_flagged(ax2, flagged, stats.clean_mean, stats.triggered_mean)
    ax2.set_xlabel("clean mean")
    ax2.set_ylabel("triggered mean")
    fig.suptitle(f"{stats.layer}: mean activation per channel ({len(flagged)} flagged in red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label_flagged(ax: Any, flagged: list[int], xs: np.ndarray, ys: np.ndarray) -> None:
    for c in flagged:
        ax.annotate(str(c), (float(xs[c]), float(ys[c])), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7, color="crimson")
