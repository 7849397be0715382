"""The random-noise control of a targeted attack (Geiping et al. 2021, Sec. 5; Schwarzschild
et al. 2021 ask for it): the same targets and the same budget of poison-class training images
as gradient matching with the same seed, each pixel moved by +eps or -eps at random (clipped to
[0, 1]). A brew that does not beat this control has not poisoned anything."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attacks.base import ATTACKS
from ..data.base import Dataset
from .gradient_matching import GradientMatching, GradientMatchingConfig
from .targets import perturbation_norms


@ATTACKS.register("random-noise")
class RandomNoise(GradientMatching):
    """±eps noise on the budget's images (see module docstring); gradient matching's keys, of
    which ``steps``, ``restarts``, ``tau``, ``batch_size`` and ``augment`` are unused."""

    name = "random-noise"
    config_class = GradientMatchingConfig

    def check_model(self, model: Any) -> None:
        """Noise needs no gradients: any learner."""

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        idx = self.budget_rows(train, poison_class, rng)
        base = train.x[idx].float()
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        signs = torch.randint(0, 2, base.shape, generator=gen, dtype=torch.int8).float() * 2 - 1
        poisons = (base + float(self.cfg.eps) * signs).clamp(0, 1)
        return idx, poisons, {"n_poison_images": len(idx),
                              **{f"perturbation_{k}": v for k, v in perturbation_norms(poisons, base).items()}}
