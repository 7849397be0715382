"""Subpopulation data poisoning (Jagielski, Severi, Pousette Harger, Oprea, CCS 2021; arXiv 2006.14026).

Threat model and metrics (Sec. 3), subpopulation identification by FeatureMatch and
ClusterMatch (Sec. 4.1), label-flipping poisons (Sec. 4.2).
"""
from __future__ import annotations

from .metrics import accuracy_on, collateral, damage_on, target_damage, worst_k_summary
from .poisons import label_flip_poisons, least_likely_label, poison_count
from .subpopulations import (
    ClusterMatch,
    Subpopulation,
    feature_match,
    fit_cluster_match,
    membership,
)
from .threat import attacker_split

__all__ = [
    "ClusterMatch",
    "Subpopulation",
    "accuracy_on",
    "attacker_split",
    "collateral",
    "damage_on",
    "feature_match",
    "fit_cluster_match",
    "label_flip_poisons",
    "least_likely_label",
    "membership",
    "poison_count",
    "target_damage",
    "worst_k_summary",
]
