"""Availability poisoning: poisons that raise the test error for everyone (label flipping;
gradient poisoning of SVMs, logistic and ridge regression; OptP and StatP against linear
regression, Jagielski et al. 2018), on the step pipeline's
``availability`` family (:mod:`poisonlab.measures.availability`). Each attack is one file
registered in :data:`~poisonlab.attacks.ATTACKS`."""
from __future__ import annotations

from . import gradient_poisoning, label_flip, optp, statp  # noqa: F401  (register)
from .base import AvailabilityAttack
from .gradient_poisoning import GradientPoisoning, GradientPoisoningConfig
from .label_flip import LabelFlip, LabelFlipConfig

__all__ = ["AvailabilityAttack", "GradientPoisoning", "GradientPoisoningConfig", "LabelFlip", "LabelFlipConfig"]
