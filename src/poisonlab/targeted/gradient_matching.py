"""Gradient matching, "Witches' Brew" (Geiping et al., ICLR 2021, arXiv 2009.02276, Alg. 1).

A budget of training images of the poison class gets perturbations ``delta`` with
``||delta||_inf <= eps`` (and ``x + delta`` in [0, 1]) so that the training gradient of the
poisons, at their true labels, points where the gradient of the targets' adversarial loss
points. The loss is one minus the cosine of the two gradients over all parameter tensors
(inner product and norms summed over the tensors), minimised with signed Adam (step
``tau * eps``, decayed tenfold at 3/8, 5/8 and 7/8 of the steps) from a uniform start in the
eps-ball; of ``restarts`` runs the lowest final loss is kept. ``augment`` shifts each poison
batch by up to ``augment`` pixels (differentiably) so that the poisons survive the victim's
own augmentation. The surrogate is the clean reference (in eval mode); the victim is retrained
from scratch on the poisoned set by its own recipe (``victim:``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks.base import ATTACKS
from ..checks import need_int
from ..data.base import Dataset
from .targets import TargetedAttack, need_fraction, need_images, need_torch, perturbation_norms


@dataclass
class GradientMatchingConfig:
    """``attack:`` keys of gradient matching."""

    name: str = "gradient-matching"
    poison_class: int | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    budget: float = 0.01
    """Share of the training set perturbed (all of it from the poison class)."""
    eps: float = 16 / 255
    """ℓ∞ bound in the pixel range [0, 1] (16/255 by default)."""
    steps: int = 250
    restarts: int = 1
    tau: float = 0.1
    batch_size: int = 512
    augment: int = 0


def parameters_of(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def matching_loss(poison_grad: list[torch.Tensor], target_grad: list[torch.Tensor],
                  target_norm: torch.Tensor) -> torch.Tensor:
    """``1 - <g_p, g_t> / (|g_p| |g_t|)``, inner product and norms summed over the parameter tensors."""
    dot = sum((p * t).sum() for p, t in zip(poison_grad, target_grad))
    norm = torch.sqrt(sum((p * p).sum() for p in poison_grad))
    return 1 - dot / (norm * target_norm).clamp_min(1e-30)


def target_gradient(model: nn.Module, target_x: torch.Tensor, poison_class: int) -> tuple[list[torch.Tensor],
                                                                                           torch.Tensor]:
    """The gradient of the targets' cross-entropy at the poison class, and its norm."""
    loss = nn.functional.cross_entropy(model(target_x), torch.full((len(target_x),), poison_class,
                                                                   device=target_x.device))
    grads = [g.detach() for g in torch.autograd.grad(loss, parameters_of(model))]
    return grads, torch.sqrt(sum((g * g).sum() for g in grads))


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` translated by (dy, dx) pixels with zero fill (differentiable in ``x``)."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    padded = nn.functional.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top:top + h, left:left + w]


def brew(model: nn.Module, base: torch.Tensor, labels: torch.Tensor, target_x: torch.Tensor, poison_class: int,
         eps: float, steps: int, restarts: int, tau: float, batch_size: int, augment: int,
         rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """Perturbations of ``base`` (labels ``labels``) matching the targets' adversarial gradient;
    the best of ``restarts`` runs and a report (final loss of every run)."""
    model.eval()
    params = parameters_of(model)
    target_grad, target_norm = target_gradient(model, target_x, poison_class)
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    losses, best, best_loss = [], torch.zeros_like(base), float("inf")
    for _ in range(restarts):
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        delta = ((torch.rand(base.shape, generator=gen) * 2 - 1) * eps).to(base.device)
        delta = ((base + delta).clamp(0, 1) - base).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=tau * eps)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        for _step in range(steps):
            step_grad = torch.zeros_like(base)
            for start in range(0, len(base), batch_size):
                part = slice(start, start + batch_size)
                xb = base[part] + delta[part]
                if augment:
                    dy, dx = (int(v) for v in torch.randint(-augment, augment + 1, (2,), generator=gen))
                    xb = shift(xb, dy, dx)
                loss = nn.functional.cross_entropy(model(xb), labels[part])
                grads = torch.autograd.grad(loss, params, create_graph=True)
                # to the perturbation only (a backward() would also fill the surrogate's .grad)
                (g,) = torch.autograd.grad(matching_loss(list(grads), target_grad, target_norm), delta)
                step_grad += g
            with torch.no_grad():
                delta.grad = step_grad.sign_()  # signed Adam
                opt.step()
                sched.step()
                delta.clamp_(-eps, eps)
                delta.copy_((base + delta).clamp(0, 1) - base)
        final = float(evaluate_loss(model, base + delta.detach(), labels, target_grad, target_norm, batch_size))
        losses.append(final)
        if final < best_loss:
            best, best_loss = delta.detach().clone(), final
    return base + best, {"restart_losses": losses, "loss": best_loss}


def evaluate_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, target_grad: list[torch.Tensor],
                  target_norm: torch.Tensor, batch_size: int) -> float:
    """The mean matching loss over the poison batches of ``x``."""
    params, total, batches = parameters_of(model), 0.0, 0
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        loss = nn.functional.cross_entropy(model(x[part]), labels[part])
        grads = torch.autograd.grad(loss, params)
        total += float(matching_loss(list(grads), target_grad, target_norm))
        batches += 1
    return total / max(batches, 1)


@ATTACKS.register("gradient-matching")
class GradientMatching(TargetedAttack):
    """Witches' Brew poisons (see module docstring)."""

    name = "gradient-matching"
    config_class = GradientMatchingConfig

    def validate(self) -> None:
        c = self.cfg
        need_fraction(c.budget, "attack.budget")
        need_fraction(c.eps, "attack.eps")
        need_fraction(c.tau, "attack.tau")
        need_int(c.steps, "attack.steps", 1, 100_000)
        need_int(c.restarts, "attack.restarts", 1, 1000)
        need_int(c.batch_size, "attack.batch_size", 1, 1 << 20)
        need_int(c.augment, "attack.augment", 0, 64, "pixels")

    def check(self, train: Dataset) -> None:
        need_images(train, self.name)
        super().check(train)

    def check_model(self, model: Any) -> None:
        need_torch(model, self.name)

    def poison_count(self, train: Dataset) -> int:
        return int(round(self.cfg.budget * len(train)))

    def budget_rows(self, train: Dataset, poison_class: int, rng: np.random.Generator) -> torch.Tensor:
        return self.poison_rows(train, poison_class, self.poison_count(train), rng)

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        c = self.cfg
        idx = self.budget_rows(train, poison_class, rng)
        base = train.x[idx].float()
        dev = torch.device(reference.device)
        model = reference.model.to(dev)
        with torch.enable_grad():
            poisons, info = brew(model, base.to(dev), train.y[idx].to(dev), target_x.float().to(dev), poison_class,
                                 float(c.eps), c.steps, c.restarts, float(c.tau), c.batch_size, c.augment, rng)
        model.cpu()
        poisons = poisons.cpu()
        return idx, poisons, {"n_poison_images": len(idx), "matching_loss": info["loss"],
                              "restart_losses": info["restart_losses"],
                              **{f"perturbation_{k}": v for k, v in perturbation_norms(poisons, base).items()}}
