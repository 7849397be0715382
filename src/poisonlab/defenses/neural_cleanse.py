"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao; IEEE S&P 2019).

A backdoor makes the target label reachable from every class with an unusually *small*
change. For each label ``t`` the defender reverse-engineers the smallest trigger that
sends clean images to ``t`` (Section IV-B, Eq. 2-3): a mask ``m`` (H x W, in [0, 1]) and a
pattern ``p`` (C x H x W, in [0, 1]) applied as

    x' = (1 - m) * x + m * p,

found by minimising ``CE(f(x'), t) + lam * |m|_1`` over clean images. The label whose mask
has an outlying small L1 norm is the infected one (Section IV-C): with the median absolute
deviation ``MAD = median(|norm - median(norm)|)``, the anomaly index of a label is
``(median - norm) / (1.4826 * MAD)`` (1.4826: the consistency constant for a normal
distribution), and a label is flagged when its index exceeds 2. Only masks smaller than
the median can be flagged (a negative index is never > 2).

Simplifications here, chosen to be deterministic and cheap (documented, not the paper's
exact procedure): the mask and pattern are ``sigmoid`` of free parameters (the paper uses
``tanh / 2 + 0.5``, the same function up to scaling of the parameter); ``lam`` is constant
(the paper adapts it to keep the attack success above a target rate); Adam runs a fixed
number of ``steps`` on mini-batches drawn with replacement by a seeded generator; the
final mask is returned (not the best one seen). Every label starts from the same seeded
initial mask and pattern, so labels differ only in their target. The model is left as it
was: it runs in eval mode and only the mask and pattern receive gradients.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import progress
from ..data.base import Dataset, as_image_batch
from ..errors import PoisonlabError, shown

__all__ = ["MAD_CONSTANT", "NeuralCleanseResult", "anomaly_indices", "neural_cleanse", "reverse_engineer_trigger", "reverse_engineer_triggers"]

MAD_CONSTANT = 1.4826
"""Consistency constant making the MAD an estimator of the standard deviation (normal data)."""
ANOMALY_THRESHOLD = 2.0
_STREAM_TAG = 0x4EC1  # separates Neural Cleanse's draws from other uses of the same seed


def _images(x: Any, name: str) -> torch.Tensor:
    x = as_image_batch(x, name, "Neural Cleanse reverse-engineers image triggers and does not apply to other data")
    if len(x) == 0:
        raise PoisonlabError(f"Neural Cleanse needs clean images in {name}; got 0")
    return x


def _check_params(steps: int, lr: float, lam: float, batch_size: int, seed: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PoisonlabError(f"Neural Cleanse steps must be a whole number >= 1, got {shown(steps)}")
    if not lr > 0:
        raise PoisonlabError(f"Neural Cleanse lr must be > 0, got {shown(lr)}")
    if not lam >= 0:
        raise PoisonlabError(f"Neural Cleanse lam (the mask-norm weight) must be >= 0, got {shown(lam)}")
    if batch_size < 1:
        raise PoisonlabError(f"Neural Cleanse batch_size must be >= 1, got {batch_size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PoisonlabError(f"Neural Cleanse seed must be a whole number >= 0, got {shown(seed)}")


def reverse_engineer_trigger(model: nn.Module, x_clean: torch.Tensor | Dataset, target: int, steps: int = 300,
                             lr: float = 0.1, lam: float = 0.01, seed: int = 0, batch_size: int = 64,
                             device: torch.device | str = "cpu", on_step: Callable[[], None] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The smallest trigger found that sends ``x_clean`` to ``target`` (Wang et al. 2019, Eq. 3).

    Minimises ``CE(f((1-m)*x + m*p), target) + lam * sum(m)`` with Adam for ``steps`` steps
    (``on_step`` is called after each, e.g. to move a progress bar).
    Returns ``(mask (H, W), pattern (C, H, W), success_rate)`` on the CPU, where the success
    rate is the fraction of all of ``x_clean`` classified as ``target`` with the final trigger
    (images already of class ``target`` count too).
    """
    masks, patterns, success = reverse_engineer_triggers(model, x_clean, [target], steps, lr, lam, seed, batch_size,
                                                         device, None if on_step is None else lambda k: on_step())
    return masks[0], patterns[0], success[0]


MAX_ROWS_PER_PASS = 1024
"""Labels are optimised together, as many as fit ``MAX_ROWS_PER_PASS`` images per forward pass."""


def reverse_engineer_triggers(model: nn.Module, x_clean: torch.Tensor | Dataset, targets: list[int], steps: int = 300,
                              lr: float = 0.1, lam: float = 0.01, seed: int = 0, batch_size: int = 64,
                              device: torch.device | str = "cpu", on_step: Callable[[int], None] | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """:func:`reverse_engineer_trigger` for every label of ``targets``, several labels per
    forward pass: each step draws one mini-batch (the same draws for every label, as each label
    starts from the same seeded mask and pattern) and stacks it once per label, so a step costs
    one larger pass instead of one small pass per label. Each label's loss, gradient and Adam
    update are its own (the labels' losses are summed; their parameters do not overlap).
    ``on_step(k)`` is called after each step with the number of labels it advanced."""
    xs = _images(x_clean, "x_clean")
    _check_params(steps, lr, lam, batch_size, seed)
    for target in targets:
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
            raise PoisonlabError(f"Neural Cleanse target must be a class index >= 0, got {shown(target)}")
    rows = min(batch_size, len(xs))
    per_pass = max(1, MAX_ROWS_PER_PASS // rows)
    masks, patterns, success = [], [], []
    for start in range(0, len(targets), per_pass):
        m, p, s = _reverse_group(model, xs, [int(t) for t in targets[start:start + per_pass]], steps, lr, lam, seed,
                                 rows, torch.device(device), on_step)
        masks.append(m)
        patterns.append(p)
        success += s
    return torch.cat(masks), torch.cat(patterns), success


def _reverse_group(model: nn.Module, xs: torch.Tensor, targets: list[int], steps: int, lr: float, lam: float,
                   seed: int, rows: int, device: torch.device, on_step: Callable[[int], None] | None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    k = len(targets)
    _, c, h, w = xs.shape
    torch_seed = int(np.random.default_rng([seed, _STREAM_TAG]).integers(2**62))
    gen = torch.Generator().manual_seed(torch_seed)
    mask0, pattern0 = torch.randn(h, w, generator=gen), torch.randn(c, h, w, generator=gen)
    mask_raw = mask0.expand(k, h, w).clone().to(device).requires_grad_(True)
    pattern_raw = pattern0.expand(k, c, h, w).clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr)
    labels = torch.tensor(targets, dtype=torch.int64, device=device).repeat_interleave(rows)
    was_training = model.training
    model.eval()
    try:
        for step in range(int(steps)):
            idx = torch.randint(0, len(xs), (rows,), generator=gen)
            xb = xs[idx].to(device, torch.float32)
            mask, pattern = torch.sigmoid(mask_raw)[:, None, None], torch.sigmoid(pattern_raw)[:, None]
            logits = model(((1 - mask) * xb + mask * pattern).reshape(k * rows, c, h, w))
            if step == 0 and max(targets) >= logits.shape[1]:
                raise PoisonlabError(f"Neural Cleanse target {max(targets)} is out of range; the model has "
                                     f"{logits.shape[1]} classes (0..{logits.shape[1] - 1})")
            per_label = F.cross_entropy(logits, labels, reduction="none").view(k, rows).mean(1)
            loss = (per_label + lam * mask.sum((1, 2, 3, 4))).sum()
            grads = torch.autograd.grad(loss, [mask_raw, pattern_raw])  # the model's weights get no .grad
            mask_raw.grad, pattern_raw.grad = grads
            opt.step()
            if on_step is not None:
                on_step(k)
        with torch.no_grad():
            mask, pattern = torch.sigmoid(mask_raw), torch.sigmoid(pattern_raw)
            hits = [0] * k
            for start in range(0, len(xs), 2048):
                xb = xs[start:start + 2048].to(device, torch.float32)
                for j, t in enumerate(targets):
                    hits[j] += int((model((1 - mask[j]) * xb + mask[j] * pattern[j]).argmax(1) == t).sum())
    finally:
        model.train(was_training)
    return mask.detach().cpu(), pattern.detach().cpu(), [hit / len(xs) for hit in hits]


def anomaly_indices(norms: np.ndarray | torch.Tensor | list[float]) -> np.ndarray:
    """``(median - norm) / (1.4826 * MAD)`` per label (Wang et al. 2019, Section IV-C).

    Positive for masks smaller than the median. With ``MAD == 0`` (more than half the norms
    equal) the index is 0 at the median and +inf / -inf below / above it.

    >>> anomaly_indices([1.0, 4.0, 5.0, 6.0, 9.0]).round(3).tolist()
    [2.698, 0.674, 0.0, -0.674, -2.698]
    """
    v = np.asarray(norms.detach().cpu() if isinstance(norms, torch.Tensor) else norms, dtype=np.float64).ravel()
    if v.size == 0:
        raise PoisonlabError("anomaly_indices needs the mask norm of at least one label; got none")
    if not np.all(np.isfinite(v)):
        raise PoisonlabError("anomaly_indices got non-finite mask norms (nan or inf)")
    median = float(np.median(v))
    mad = float(np.median(np.abs(v - median)))
    diff = median - v
    if mad == 0:
        return np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0))
    return diff / (MAD_CONSTANT * mad)


@dataclass
class NeuralCleanseResult:
    """Per label: the reverse-engineered mask's L1 norm, its anomaly index, the trigger itself
    and its success rate; the labels flagged as infected (anomaly index > ``threshold``)."""

    norms: np.ndarray
    anomaly: np.ndarray
    flagged: list[int]
    masks: torch.Tensor
    patterns: torch.Tensor
    success: np.ndarray
    threshold: float = ANOMALY_THRESHOLD
    params: dict[str, Any] = field(default_factory=dict)


def neural_cleanse(model: nn.Module, x_clean: torch.Tensor | Dataset, num_classes: int, steps: int = 300,
                   lam: float = 0.01, lr: float = 0.1, seed: int = 0, batch_size: int = 64,
                   device: torch.device | str = "cpu") -> NeuralCleanseResult:
    """Reverse-engineer a trigger for every label and flag the outliers (Wang et al. 2019, Section IV).

    Labels whose mask L1 norm has an anomaly index above 2 are ``flagged``, most anomalous first.
    A progress bar over labels x steps is shown on a terminal (:mod:`poisonlab.progress`).
    """
    xs = _images(x_clean, "x_clean")
    _check_params(steps, lr, lam, batch_size, seed)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise PoisonlabError(f"Neural Cleanse needs num_classes >= 2 to compare labels, got {shown(num_classes)}")
    n = int(num_classes)
    # one bar over labels x steps, on a terminal only (poisonlab.progress; off with --quiet)
    with progress.bar("Neural Cleanse", n * int(steps), unit="step") as bar:
        mask_t, pattern_t, success = reverse_engineer_triggers(model, xs, list(range(n)), steps, lr, lam, seed,
                                                               batch_size, device, on_step=bar.advance)
    norms = mask_t.abs().sum((1, 2)).double().numpy()
    anomaly = anomaly_indices(norms)
    flagged = [int(t) for t in np.argsort(-anomaly, kind="stable") if anomaly[t] > ANOMALY_THRESHOLD]
    return NeuralCleanseResult(norms, anomaly, flagged, mask_t, pattern_t, np.asarray(success),
                               ANOMALY_THRESHOLD, {"steps": int(steps), "lam": lam, "lr": lr, "seed": seed,
                                                   "batch_size": batch_size})
