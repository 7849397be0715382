"""Detectors as registered defenses: STRIP (Gao et al. 2019) and Neural Cleanse (Wang et al. 2019).

**STRIP** (:func:`strip_defense`) guards the suspect model at run time. Its threshold is the
``frr``-quantile of STRIP entropies of clean *validation* inputs (Gao et al. 2019, Sec. 4.3);
the validation split is cut (seeded) into the overlay pool and the inputs that fit the
threshold, so that no input is blended with itself. The defended model is a
:class:`StripGuard`: it answers the suspect model's logits plus one more column,
"rejected", that wins exactly on the inputs STRIP flags. ``experiment.evaluate`` reads a
:class:`RejectingClassifier`'s extra column as a refusal: a rejected clean input is an error,
a rejected triggered input a failed attack (attack success = not rejected *and* the attack's
success criterion), and it records the shares rejected (``clean_rejected_rate``: the FRR on
clean test inputs; ``triggered_rejected_rate``: the TPR on triggered test inputs).

**Neural Cleanse** (:func:`neural_cleanse_defense`) reverse-engineers a trigger per label on
clean validation images (Wang et al. 2019, Sec. IV), flags labels whose mask L1 norm has an
anomaly index above ``threshold``, and, with ``mitigate: unlearning`` and a flagged label,
fine-tunes a copy of the model on the validation split where a share (``unlearn_share``,
the paper's 20%) of the images carry a reversed trigger of a flagged label but keep their
true labels (Sec. VI-C, "unlearning"). With nothing flagged (or ``mitigate: none``) the
model is returned unchanged. Whether the attack's target was flagged is reported only; the
defense never reads the attack's labels or the test data.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..attacks.base import AttackTestSet
from ..checks import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_ROWS,
    is_number,
    is_whole,
    need_int,
    need_number,
)
from ..data.base import Dataset, as_image_batch
from ..errors import PoisonlabError, shown
from ..train import TrainConfig, train_model
from .neural_cleanse import neural_cleanse
from .pruning import DefenseOutcome, check_label
from .strip import fit_threshold, strip_entropy

__all__ = ["NeuralCleanseConfig", "RejectingClassifier", "StripConfig", "StripGuard", "neural_cleanse_defense",
           "run_neural_cleanse", "run_strip", "strip_defense"]

_SPLIT_TAG = 0x57D1  # STRIP's pool / threshold split of the validation rows
_NC_TAG = 0x4ECD  # Neural Cleanse's choice of validation images and of the rows to stamp


MAX_OVERLAYS = 10_000
MAX_NC_STEPS = 100_000


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PoisonlabError(message)


# -- STRIP ------------------------------------------------------------------------------------
@dataclass
class StripConfig:
    """``defenses:`` keys of STRIP (Gao et al. 2019): ``frr`` is the share of clean validation
    inputs the threshold rejects; ``n_overlays`` clean images, each weighted ``alpha``, are
    blended onto every input; ``pool_share`` of the validation split is the overlay pool, the
    rest fits the threshold; ``batch_size`` bounds the blended images per forward pass."""

    name: str = "strip"
    label: str | None = None
    frr: float = 0.01
    n_overlays: int = 20
    alpha: float = 0.5
    pool_share: float = 0.5
    batch_size: int = 2048

    def validate(self, where: str = "defense") -> None:
        check_label(self.label, f"{where}.label")
        _check(is_number(self.frr) and 0 < self.frr < 1,
               f"{where}.frr must be in (0, 1) (the share of clean validation inputs rejected), got {shown(self.frr)}")
        _check(is_whole(self.n_overlays) and self.n_overlays >= 1,
               f"{where}.n_overlays must be a whole number >= 1 (clean images blended per input), "
               f"got {shown(self.n_overlays)}")
        _check(is_number(self.alpha) and 0 < self.alpha < 1,
               f"{where}.alpha must be in (0, 1) (the overlay's weight; 0.5 is the paper's), got {shown(self.alpha)}")
        _check(is_number(self.pool_share) and 0 < self.pool_share < 1,
               f"{where}.pool_share must be in (0, 1) (the share of validation images used as overlays), "
               f"got {shown(self.pool_share)}")
        _check(is_whole(self.batch_size) and self.batch_size >= 1,
               f"{where}.batch_size must be a whole number >= 1, got {shown(self.batch_size)}")
        need_int(self.n_overlays, f"{where}.n_overlays", 1, MAX_OVERLAYS, "clean images blended per input")
        need_int(self.batch_size, f"{where}.batch_size", 1, MAX_BATCH)


class RejectingClassifier(nn.Module):
    """A classifier that may refuse an input: its logits have ``num_classes + 1`` columns and
    the last one ("rejected", class index ``num_classes``) is the largest exactly on refused
    inputs. ``experiment.evaluate`` counts a refused clean input as an error and a refused
    triggered input as a failed attack."""


class StripGuard(RejectingClassifier):
    """The suspect model behind a STRIP gate (Gao et al. 2019): inputs whose STRIP entropy
    (blends with ``pool``) is below ``threshold`` are rejected.

    The overlays of the i-th row of every forward call are drawn from ``seed`` as in
    :func:`~poisonlab.defenses.strip.strip_entropy`, so the answers are deterministic for the
    same inputs in the same batches (another batching draws other overlays for a row).
    """

    def __init__(self, model: nn.Module, pool: torch.Tensor, threshold: float, n_overlays: int = 20,
                 alpha: float = 0.5, seed: int = 0, batch_size: int = 2048) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("pool", pool.detach().float().clone(), persistent=False)
        self.threshold = float(threshold)
        self.n_overlays, self.alpha, self.seed, self.batch_size = int(n_overlays), float(alpha), int(seed), int(batch_size)

    def entropies(self, x: torch.Tensor) -> np.ndarray:
        """STRIP entropy (bits) of every row of ``x`` against this guard's overlay pool."""
        return strip_entropy(self.model, x, self.pool, self.n_overlays, self.seed, self.alpha, self.batch_size,
                             x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        flagged = torch.from_numpy(self.entropies(x) < self.threshold).to(logits.device)
        top, bottom = logits.detach().max(1).values, logits.detach().min(1).values
        rejected = torch.where(flagged, top + 1, bottom - 1)
        return torch.cat([logits, rejected[:, None].to(logits.dtype)], 1)


def _images(val: Dataset | None, defense: str) -> torch.Tensor:
    if val is None or len(val) == 0:
        raise PoisonlabError(f"{defense} decides on a clean validation split; set data.val_fraction > 0")
    return as_image_batch(val, "the validation split", f"{defense} works on images, not tabular or text data")


def strip_split(n: int, pool_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted row indices ``(pool, threshold rows)`` of ``n`` validation rows, seeded."""
    if n < 2:
        raise PoisonlabError(f"STRIP needs at least 2 validation images (an overlay pool and inputs to fit the "
                             f"threshold on), got {n}; raise data.val_fraction")
    perm = np.random.default_rng([seed, _SPLIT_TAG]).permutation(n)
    k = min(max(round(pool_share * n), 1), n - 1)
    return np.sort(perm[:k]), np.sort(perm[k:])


def strip_defense(model: nn.Module, cfg: StripConfig, val: Dataset | None, test_clean: Dataset | None = None,
                  attack_set: AttackTestSet | None = None, seed: int = 0,
                  device: torch.device | str = "cpu") -> DefenseOutcome:
    """STRIP as a defense: a :class:`StripGuard` around a copy of ``model`` whose threshold is
    fitted on clean validation inputs only (Gao et al. 2019, Sec. 4.3); ``model`` is untouched.

    ``test_clean`` and ``attack_set`` are not read: the guard is measured by ``evaluate``.
    """
    cfg.validate()
    xs = _images(val, "STRIP")
    pool_rows, fit_rows = strip_split(len(xs), cfg.pool_share, seed)
    suspect = copy.deepcopy(model).to(device)
    guard = StripGuard(suspect, xs[pool_rows], 0.0, cfg.n_overlays, cfg.alpha, seed, cfg.batch_size).to(device)
    clean = strip_entropy(suspect, xs[fit_rows], guard.pool, cfg.n_overlays, seed, cfg.alpha, cfg.batch_size, device)
    guard.threshold = fit_threshold(clean, cfg.frr)
    extra = {"threshold": guard.threshold, "frr_target": cfg.frr,
             "frr_validation": float((clean < guard.threshold).mean()),
             "validation_entropy_mean": float(clean.mean()), "overlay_pool": len(pool_rows),
             "threshold_inputs": len(fit_rows), "n_overlays": cfg.n_overlays, "alpha": cfg.alpha}
    return DefenseOutcome(guard, extra=extra)


# -- Neural Cleanse -----------------------------------------------------------------------------
@dataclass
class NeuralCleanseConfig:
    """``defenses:`` keys of Neural Cleanse (Wang et al. 2019).

    Reverse engineering: ``steps`` Adam steps of learning rate ``lr`` per label on batches of
    ``batch_size`` from at most ``max_images`` validation images (null: all), mask-norm weight
    ``lam``; labels with an anomaly index above ``threshold`` are flagged. ``mitigate:
    unlearning`` fine-tunes on the validation split with ``unlearn_share`` of it stamped with a
    flagged label's reversed trigger (true labels kept), ``none`` only detects.
    """

    name: str = "neural-cleanse"
    label: str | None = None
    steps: int = 300
    lr: float = 0.1
    lam: float = 0.01
    threshold: float = 2.0
    batch_size: int = 64
    max_images: int | None = 1000
    mitigate: Literal["unlearning", "none"] = "unlearning"
    unlearn_share: float = 0.2
    unlearn_epochs: int = 10
    unlearn_lr: float = 0.01
    unlearn_optimizer: Literal["sgd", "adam"] = "sgd"
    unlearn_momentum: float = 0.9
    unlearn_batch_size: int = 32
    eval_batch_size: int = 2048

    def validate(self, where: str = "defense") -> None:
        check_label(self.label, f"{where}.label")
        _check(is_whole(self.steps) and self.steps >= 1,
               f"{where}.steps must be a whole number >= 1 (optimisation steps per label), got {shown(self.steps)}")
        _check(is_number(self.lr) and self.lr > 0, f"{where}.lr must be > 0, got {shown(self.lr)}")
        _check(is_number(self.lam) and self.lam >= 0,
               f"{where}.lam must be >= 0 (the weight of the mask's L1 norm), got {shown(self.lam)}")
        _check(is_number(self.threshold) and self.threshold > 0,
               f"{where}.threshold must be > 0 (the anomaly index above which a label is flagged; the paper's "
               f"is 2), got {shown(self.threshold)}")
        _check(is_whole(self.batch_size) and self.batch_size >= 1,
               f"{where}.batch_size must be a whole number >= 1, got {shown(self.batch_size)}")
        _check(self.max_images is None or (is_whole(self.max_images) and self.max_images >= 1),
               f"{where}.max_images must be a whole number >= 1 or null (all validation images), "
               f"got {shown(self.max_images)}")
        _check(self.mitigate in ("unlearning", "none"),
               f"{where}.mitigate must be 'unlearning' or 'none', got {shown(self.mitigate)}")
        _check(is_number(self.unlearn_share) and 0 < self.unlearn_share < 1,
               f"{where}.unlearn_share must be in (0, 1) (the share of validation images stamped with the "
               f"reversed trigger; the paper's is 0.2), got {shown(self.unlearn_share)}")
        _check(is_whole(self.unlearn_epochs) and self.unlearn_epochs >= 1,
               f"{where}.unlearn_epochs must be a whole number >= 1, got {shown(self.unlearn_epochs)}")
        _check(is_number(self.unlearn_lr) and self.unlearn_lr > 0,
               f"{where}.unlearn_lr must be > 0, got {shown(self.unlearn_lr)}")
        _check(is_number(self.unlearn_momentum) and 0 <= self.unlearn_momentum < 1,
               f"{where}.unlearn_momentum must be in [0, 1), got {shown(self.unlearn_momentum)}")
        _check(is_whole(self.unlearn_batch_size) and self.unlearn_batch_size >= 1,
               f"{where}.unlearn_batch_size must be a whole number >= 1, got {shown(self.unlearn_batch_size)}")
        _check(is_whole(self.eval_batch_size) and self.eval_batch_size >= 1,
               f"{where}.eval_batch_size must be a whole number >= 1, got {shown(self.eval_batch_size)}")
        need_int(self.steps, f"{where}.steps", 1, MAX_NC_STEPS, "optimisation steps per label")
        need_number(self.lr, f"{where}.lr", 0, MAX_LR, low_open=True)
        need_number(self.lam, f"{where}.lam", 0, 1e6)
        need_number(self.threshold, f"{where}.threshold", 0, 1e12, low_open=True)
        if self.max_images is not None:
            need_int(self.max_images, f"{where}.max_images", 1, MAX_ROWS)
        need_int(self.unlearn_epochs, f"{where}.unlearn_epochs", 1, MAX_EPOCHS)
        need_number(self.unlearn_lr, f"{where}.unlearn_lr", 0, MAX_LR, low_open=True)
        for key in ("batch_size", "unlearn_batch_size", "eval_batch_size"):
            need_int(getattr(self, key), f"{where}.{key}", 1, MAX_BATCH)

    def unlearn_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.unlearn_epochs, batch_size=self.unlearn_batch_size,
                           optimizer=self.unlearn_optimizer, lr=self.unlearn_lr, momentum=self.unlearn_momentum,
                           schedule="constant", eval_batch_size=self.eval_batch_size)


def unlearning_set(val: Dataset, masks: torch.Tensor, patterns: torch.Tensor, share: float,
                   seed: int) -> tuple[Dataset, np.ndarray]:
    """The validation split with ``share`` of its rows (seeded) stamped ``(1 - m) * x + m * p``
    with the given reversed triggers, taken in turn, labels unchanged (Wang et al. 2019, Sec. VI-C).

    Returns the new data set and the stamped row indices.
    """
    xs = _images(val, "Neural Cleanse")
    n = len(xs)
    k = min(max(round(share * n), 1), n)
    rows = np.sort(np.random.default_rng([seed, _NC_TAG, 1]).choice(n, size=k, replace=False))
    x = xs.detach().to(torch.float32).clone()
    which = torch.arange(k) % len(masks)
    m = masks[which].unsqueeze(1).to(torch.float32)  # (k, 1, H, W)
    p = patterns[which].to(torch.float32)
    idx = torch.from_numpy(rows)
    x[idx] = (1 - m) * x[idx] + m * p
    return Dataset(x, val.y.clone(), list(val.classes)), rows


def _targets(attack_set: AttackTestSet | None) -> list[int] | None:
    if attack_set is None or attack_set.untargeted or len(attack_set.target) == 0:
        return None
    return sorted(int(t) for t in torch.unique(attack_set.target))


def neural_cleanse_defense(model: nn.Module, cfg: NeuralCleanseConfig, val: Dataset | None,
                           test_clean: Dataset | None = None, attack_set: AttackTestSet | None = None, seed: int = 0,
                           device: torch.device | str = "cpu") -> DefenseOutcome:
    """Neural Cleanse detection on clean validation images, then unlearning of the flagged
    labels' reversed triggers (Wang et al. 2019, Sec. IV and VI-C); ``model`` is untouched.

    ``attack_set`` is read only to report whether the attack's target label was flagged.
    """
    cfg.validate()
    xs = _images(val, "Neural Cleanse")
    assert val is not None
    rows = np.arange(len(xs))
    if cfg.max_images is not None and cfg.max_images < len(xs):
        rows = np.sort(np.random.default_rng([seed, _NC_TAG, 0]).choice(len(xs), size=cfg.max_images, replace=False))
    suspect = copy.deepcopy(model).to(device)
    found = neural_cleanse(suspect, xs[torch.from_numpy(rows)], val.num_classes, cfg.steps, cfg.lam, cfg.lr, seed,
                           cfg.batch_size, device)
    order = np.argsort(-found.anomaly, kind="stable")
    flagged = [int(t) for t in order if found.anomaly[t] > cfg.threshold]
    extra: dict[str, Any] = {
        "mask_l1": [float(v) for v in found.norms], "anomaly_index": [float(v) for v in found.anomaly],
        "trigger_success": [float(v) for v in found.success], "anomaly_threshold": float(cfg.threshold),
        "flagged_labels": flagged, "reverse_images": len(rows),
    }
    targets = _targets(attack_set)
    if targets is not None:  # the harness knows the target; the defense never uses it
        extra["attack_targets"] = targets
        extra["target_flagged"] = any(t in flagged for t in targets)
    result = None
    if cfg.mitigate == "unlearning" and flagged:
        data, stamped = unlearning_set(val, found.masks[flagged], found.patterns[flagged], cfg.unlearn_share, seed)
        result = train_model(suspect, data, cfg.unlearn_config(), seed=seed, device=device, desc="unlearning")
        extra.update(mitigated=True, unlearning_rows=len(data), unlearning_stamped=len(stamped))
    else:
        extra.update(mitigated=False, unchanged_because="mitigate is none" if cfg.mitigate == "none"
                     else "no label was flagged")
    return DefenseOutcome(suspect, fine_tune=result, extra=extra)


# -- as registered defenses: run(cfg, ctx) -----------------------------------------------------
def run_strip(cfg: StripConfig, ctx: Any) -> DefenseOutcome:
    """``strip`` on the inputs of :class:`~poisonlab.defenses.registry.DefenseInputs`."""
    return strip_defense(ctx.model, cfg, ctx.val, ctx.test, ctx.attack_set, seed=ctx.seed, device=ctx.device)


def run_neural_cleanse(cfg: NeuralCleanseConfig, ctx: Any) -> DefenseOutcome:
    """``neural-cleanse`` on the inputs of :class:`~poisonlab.defenses.registry.DefenseInputs`."""
    return neural_cleanse_defense(ctx.model, cfg, ctx.val, ctx.test, ctx.attack_set, seed=ctx.seed, device=ctx.device)
