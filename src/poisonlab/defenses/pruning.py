"""Fine-Pruning (Liu, Dolan-Gavitt, Garg, RAID 2018, arXiv 1805.12185).

A backdoored network tends to keep its backdoor in neurons that stay *dormant* on clean
inputs. The defender (Section 3.1) prunes the channels of a late convolution layer in
increasing order of their mean activation on clean validation data, and stops before the
validation accuracy falls more than ``max_drop`` below the unpruned model's (4 points in
the paper). Fine-pruning (Section 3.3) then fine-tunes the pruned network on the clean
validation data with a small learning rate; "fine-tuning" alone is the paper's baseline.

The layer, its activation point, the channel mask and the activation ranking are in
:mod:`poisonlab.defenses.pruning_mask`; the ``defense:`` config, the result types and
fine-tuning in :mod:`poisonlab.defenses.pruning_config`. Both are re-exported here.

Nothing before the activation point changes as channels are pruned, so :func:`pruning_curve` computes
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import progress
from ..attacks.base import AttackTestSet
from ..data.base import Dataset
from ..errors import PoisonlabError
from ..metrics import accuracy
from ..models.layers import get_layer
from ..train import predict, predict_logits
from .pruning_config import (
    DefenseOutcome,
    FinePruningConfig,
    PruningResult,
    check_label,
    check_max_drop,
    check_step,
    fine_tune,
)
from .pruning_mask import (
    ELEMENTWISE,
    ChannelMask,
    LayerKind,
    _is_plain_sequential,
    _width,
    activation_point,
    bias_site,
    channel_means,
    channel_stats,
    hidden_linear_layers,
    prune_order,
    resolve_layer,
)

__all__ = [
    "ELEMENTWISE", "FEATURE_CACHE_BYTES", "ChannelMask", "DefenseOutcome", "FinePruningConfig", "LayerKind",
    "PruningResult", "activation_point", "bias_site", "channel_means", "channel_stats", "check_label",
    "check_max_drop", "check_step", "choose_stop", "fine_prune", "fine_tune", "fine_tune_defense",
    "hidden_linear_layers", "plot_pruning_curve", "prune_defense", "prune_order", "pruning_curve",
    "resolve_layer", "run_fine_pruning", "run_fine_tuning", "run_pruning", "split_at", "step_sizes",
]

#: two accuracies closer than this count as equal in the stop rule (k/N rounding)
_TOL = 1e-9

#: most bytes of cached activation-point outputs :func:`pruning_curve` keeps (CPU, float32)
FEATURE_CACHE_BYTES = 2 * 1024 ** 3


# -- the pruning curve and the stop rule -------------------------------------------
def step_sizes(channels: int, step: float) -> list[int]:
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


def pruning_curve(model: nn.Module, layer: str | None, val: Dataset, test_clean: Dataset | None = None,
                  attack_set: AttackTestSet | None = None, step: float = 1, max_drop: float = 0.04,
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


# -- the defense ------------------------------------------------------------------------
def prune_defense(model: nn.Module, cfg: FinePruningConfig, val: Dataset, test_clean: Dataset | None = None,
                  attack_set: AttackTestSet | None = None, seed: int = 0,
                  device: torch.device | str = "cpu") -> DefenseOutcome:
    """The pruning defense (Sec. 3.1): a pruned copy of ``model``; ``model`` is untouched. Conv
    channels of a CNN, hidden units of an MLP (``cfg.layer_kind``)."""
    cfg.validate(model)
    defended = copy.deepcopy(model)
    curve = pruning_curve(defended, cfg.layer, val, test_clean, attack_set, cfg.step, cfg.max_drop,
                          cfg.eval_batch_size, device, cfg.mask_at, cfg.full_curve, cfg.kind_for(model))
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
    pruned copy on ``val`` with the mask in place (``fine_tune_epochs: 0``: pruning alone).
    ``model`` is untouched."""
    out = prune_defense(model, cfg, val, test_clean, attack_set, seed, device)
    if cfg.fine_tune_epochs > 0:
        out.fine_tune = fine_tune(out.model, val, cfg.fine_tune_config(), seed, device)
    return out


# -- as registered defenses: run(cfg, ctx) -----------------------------------------------------
def run_pruning(cfg: FinePruningConfig, ctx: Any) -> DefenseOutcome:
    """``pruning`` on the inputs of :class:`~poisonlab.defenses.registry.DefenseInputs`."""
    return prune_defense(ctx.model, cfg, ctx.val, ctx.test, ctx.attack_set, ctx.seed, ctx.device)


def run_fine_tuning(cfg: FinePruningConfig, ctx: Any) -> DefenseOutcome:
    """``fine-tuning`` on the inputs of :class:`~poisonlab.defenses.registry.DefenseInputs`."""
    return fine_tune_defense(ctx.model, cfg, ctx.val, ctx.test, ctx.attack_set, ctx.seed, ctx.device)


def run_fine_pruning(cfg: FinePruningConfig, ctx: Any) -> DefenseOutcome:
    """``fine-pruning`` on the inputs of :class:`~poisonlab.defenses.registry.DefenseInputs`."""
    return fine_prune(ctx.model, cfg, ctx.val, ctx.test, ctx.attack_set, ctx.seed, ctx.device)
