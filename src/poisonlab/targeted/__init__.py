"""Targeted (integrity) poisoning: feature collision (Shafahi et al. 2018), gradient matching
(Geiping et al. 2021) and its random-noise control, on the step pipeline's ``targeted`` family
(:mod:`poisonlab.measures.targeted`). Each attack is one file registered in
:data:`~poisonlab.attacks.ATTACKS`."""
from __future__ import annotations

from . import feature_collision, gradient_matching, influence, noise_control, stingray  # noqa: F401,I001  (register)
from .feature_collision import FeatureCollision, FeatureCollisionConfig, collide, proximal_step
from .gradient_matching import GradientMatching, GradientMatchingConfig, matching_loss
from .noise_control import RandomNoise
from .targets import TargetedAttack, TargetsConfig

__all__ = ["FeatureCollision", "FeatureCollisionConfig", "GradientMatching", "GradientMatchingConfig", "RandomNoise",
           "TargetedAttack", "TargetsConfig", "collide", "matching_loss", "proximal_step"]
