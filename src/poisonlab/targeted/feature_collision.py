"""Feature collision, "Poison Frogs" (Shafahi et al., NeurIPS 2018, arXiv 1804.00792, Alg. 1).

A clean-label poison ``x`` starts from a base image ``b`` of the poison class and solves

    min_x  ||f(x) - f(t)||^2 + beta * ||x - b||^2,   x in [0, 1]

by forward-backward splitting: a gradient step on the feature term (step ``lam``), then the
proximal step of the second term, ``x = (x_hat + 2 lam beta b) / (1 + 2 lam beta)``, then the
clip to the pixel box. Where a poison's objective rose, its step is multiplied by ``decay``;
each poison keeps its best iterate. ``beta = beta0 * (D_f / D_in)^2`` rescales the penalty to
the feature and input dimensions (the paper's beta0 * 2048^2 / dim_b^2; ``beta0`` 0.2 by
default). ``opacity`` > 0 watermarks: the base becomes ``(1 - opacity) b + opacity t``
(the paper's end-to-end setting; 0 in the transfer setting). ``poisons_per_target`` bases of
the poison class, drawn at random, are altered per target; labels stay.

The victim the paper attacks with one poison is the transfer setting: ``victim: {init:
reference, trainable: last}`` (the features frozen, the last layer retrained).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attacks.base import ATTACKS
from ..checks import is_number, need_int
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .features import feature_map, resolve_feature_layer
from .targets import TargetedAttack, need_images, need_torch, perturbation_norms

MAX_ITERATIONS = 100_000


@dataclass
class FeatureCollisionConfig:
    """``attack:`` keys of feature collision."""

    name: str = "feature-collision"
    poison_class: int | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    poisons_per_target: int = 1
    layer: str = "auto"
    beta0: float = 0.2
    iterations: int = 1500
    step: float = 0.01
    decay: float = 0.5
    opacity: float = 0.0
    tolerance: float = 1e-7
    """Stop when no poison's objective fell by more than this share in an iteration."""


def proximal_step(x_hat: torch.Tensor, base: torch.Tensor, lam: torch.Tensor, beta: float) -> torch.Tensor:
    """``argmin_x beta ||x - base||^2 + ||x - x_hat||^2 / (2 lam)`` (per row ``lam``), in closed form."""
    lam = lam.reshape(-1, *([1] * (x_hat.dim() - 1)))
    return (x_hat + 2 * lam * beta * base) / (1 + 2 * lam * beta)


def collide(features: Any, target_feat: torch.Tensor, base: torch.Tensor, beta: float, iterations: int,
            step: float, decay: float, tolerance: float = 1e-7) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward-backward splitting for every row of ``base`` towards its row of ``target_feat``;
    the best iterate of each row and a report (objective before and after, iterations run)."""
    x = base.clone()
    with torch.no_grad():
        start_dist = ((features(base) - target_feat) ** 2).sum(1).sqrt()
    lam = torch.full((len(x),), float(step), dtype=x.dtype)
    best_x, best_obj = x.clone(), torch.full((len(x),), float("inf"), dtype=torch.float64)
    prev = best_obj.clone()
    first = None
    done = 0
    for done in range(1, iterations + 1):
        x.requires_grad_(True)
        feat_term = ((features(x) - target_feat) ** 2).sum(1)
        (grad,) = torch.autograd.grad(feat_term.sum(), x)
        with torch.no_grad():
            obj = (feat_term.detach() + beta * ((x - base) ** 2).reshape(len(x), -1).sum(1)).double()
            first = obj.clone() if first is None else first
            better = obj < best_obj
            best_x[better], best_obj[better] = x.detach()[better], obj[better]
            lam[obj > prev] *= decay  # the objective rose: shorter steps for that poison
            fell = (prev - obj) / prev.clamp_min(1e-30)
            if done > 1 and bool((fell.abs() <= tolerance).all()):
                break
            prev = obj
            x = proximal_step(x.detach() - lam.reshape(-1, *([1] * (x.dim() - 1))) * grad, base, lam, beta)
            x = x.clamp_(0.0, 1.0)
    with torch.no_grad():  # the last iterate may be the best
        obj = (((features(x) - target_feat) ** 2).sum(1) + beta * ((x - base) ** 2).reshape(len(x), -1).sum(1)).double()
        better = obj < best_obj
        best_x[better], best_obj[better] = x[better], obj[better]
        dist = ((features(best_x) - target_feat) ** 2).sum(1).sqrt()
    return best_x, {"objective_start": first.tolist() if first is not None else [],
                    "objective_end": best_obj.tolist(), "feature_distance": dist.double().tolist(),
                    "feature_distance_start": start_dist.double().tolist(),
                    "iterations": done}


@ATTACKS.register("feature-collision")
class FeatureCollision(TargetedAttack):
    """Clean-label feature-collision poisons (see module docstring)."""

    name = "feature-collision"
    config_class = FeatureCollisionConfig

    def validate(self) -> None:
        c = self.cfg
        need_int(c.poisons_per_target, "attack.poisons_per_target", 1, 100_000)
        need_int(c.iterations, "attack.iterations", 1, MAX_ITERATIONS)
        if not isinstance(c.layer, str) or not c.layer:
            raise PoisonlabError(f"attack.layer must be a layer name or 'auto', got {shown(c.layer)}")
        for key, lo, hi in (("beta0", 0, 1e6), ("step", 0, 1e6), ("tolerance", 0, 1)):
            v = getattr(c, key)
            if not is_number(v) or not lo < float(v) <= hi:
                raise PoisonlabError(f"attack.{key} must be in ({lo}, {hi:g}], got {shown(v)}")
        if not is_number(c.decay) or not 0 < float(c.decay) < 1:
            raise PoisonlabError(f"attack.decay must be in (0, 1), got {shown(c.decay)}")
        if not is_number(c.opacity) or not 0 <= float(c.opacity) < 1:
            raise PoisonlabError(f"attack.opacity must be in [0, 1), got {shown(c.opacity)}")

    def check(self, train: Dataset) -> None:
        need_images(train, self.name)
        super().check(train)

    def poison_count(self, train: Dataset) -> int:
        return self.cfg.poisons_per_target * self.n_targets()

    def check_model(self, model: Any) -> None:
        need_torch(model, self.name)
        resolve_feature_layer(model, self.cfg.layer)

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        c, k = self.cfg, self.cfg.poisons_per_target
        idx = self.poison_rows(train, poison_class, self.poison_count(train), rng, "attack.poisons_per_target x targets")
        idx = idx[torch.from_numpy(rng.permutation(len(idx)))]  # bases assigned to targets at random
        model = reference.model
        features = feature_map(model, resolve_feature_layer(model, c.layer))
        targets = target_x.repeat_interleave(k, 0)
        with torch.no_grad():
            target_feat = features(targets)
        base = train.x[idx].float()
        if c.opacity > 0:
            base = (1 - c.opacity) * base + c.opacity * targets
        d_feat, d_in = target_feat.shape[1], base[0].numel()
        beta = float(c.beta0) * (d_feat / d_in) ** 2
        poisons, info = collide(features, target_feat, base, beta, c.iterations, c.step, c.decay, c.tolerance)
        order = torch.argsort(idx)
        report = {"n_poison_images": len(idx), "beta": beta, "feature_dim": d_feat,
                  **{f"perturbation_{k}": v for k, v in perturbation_norms(poisons, train.x[idx].float()).items()},
                  "feature_distance_mean": float(np.mean(info["feature_distance"])),
                  "feature_distance_start_mean": float(np.mean(info["feature_distance_start"])),
                  "target_feature_norm_mean": float(target_feat.norm(dim=1).mean()),
                  "iterations_run": info["iterations"]}
        return idx[order], poisons[order], report
