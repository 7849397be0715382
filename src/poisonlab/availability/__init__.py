"""Availability poisoning: poisons that raise the test error for everyone (label flipping;
gradient poisoning of SVMs, logistic and ridge regression), on the step pipeline's
``availability`` family (:mod:`poisonlab.measures.availability`). Each attack is one file
registered in :data:`~poisonlab.attacks.ATTACKS`."""
from __future__ import annotations

from . import gradient_poisoning, label_flip  # noqa: F401  (register)
from .base import AvailabilityAttack
from .gradient_poisoning import GradientPoisoning, GradientPoisoningConfig
from .label_flip import LabelFlip, LabelFlipConfig

__all__ = ["AvailabilityAttack", "GradientPoisoning", "GradientPoisoningConfig", "LabelFlip", "LabelFlipConfig"]
