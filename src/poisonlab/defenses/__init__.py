"""Defenses, registered by name in :data:`DEFENSES`.

Each entry is a :class:`DefenseSpec`: ``spec.from_config(raw)`` turns a ``defense:``
config section into its validated config, and ``spec.run(model, cfg, val, test_clean,
attack_set, seed=..., device=...)`` returns a :class:`~poisonlab.defenses.pruning.DefenseOutcome`
holding a defended *copy* of the model (the suspect model is never modified). Decisions
(e.g. where pruning stops) read ``val`` only; ``test_clean`` and ``attack_set`` are
measured for the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..config import from_dict
from ..registry import Registry


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense: its config dataclass and the function that applies it."""

    name: str
    description: str
    config: type
    run: Callable[..., Any]
    kind: str = "model"
    """``model``: acts on the trained model (pruning, fine-tuning); ``filter``: removes training
    rows and retrains (needs a :class:`~poisonlab.defenses.filter_defenses.FilterContext`);
    ``detector``: called like ``model``, detects triggered inputs or infected labels and returns a
    guarded (:class:`~poisonlab.defenses.detector_defenses.RejectingClassifier`) or repaired copy
    (STRIP, Neural Cleanse); it prunes no channels."""

    def from_config(self, raw: dict[str, Any] | None = None) -> Any:
        """The validated config of this defense from its ``defense:`` section."""
        data = dict(raw or {})
        data.setdefault("name", self.name)
        cfg = from_dict(self.config, data, "defense")
        cfg.validate()
        return cfg


DEFENSES: Registry[DefenseSpec] = Registry("defense")

# the registry exists before defense modules register into it
from .pruning import (  # noqa: E402
    ChannelMask,
    DefenseOutcome,
    FinePruningConfig,
    PruningResult,
    activation_point,
    channel_means,
    fine_prune,
    fine_tune,
    fine_tune_defense,
    plot_pruning_curve,
    prune_defense,
    prune_order,
    pruning_curve,
)

from .filter_defenses import (  # noqa: E402
    ActivationClusteringConfig,
    FilterContext,
    SpectralConfig,
    activation_clustering_defense,
    spectral_defense,
)

from .detector_defenses import (  # noqa: E402
    NeuralCleanseConfig,
    RejectingClassifier,
    StripConfig,
    StripGuard,
    neural_cleanse_defense,
    strip_defense,
)

for _spec in (
    DefenseSpec("pruning", "prune dormant conv channels until validation accuracy drops (Liu et al. 2018, 3.1)",
                FinePruningConfig, prune_defense),
    DefenseSpec("fine-tuning", "fine-tune on clean validation data (Liu et al. 2018, 3.2 baseline)",
                FinePruningConfig, fine_tune_defense),
    DefenseSpec("fine-pruning", "prune dormant channels, then fine-tune (Liu et al. 2018, 3.3)",
                FinePruningConfig, fine_prune),
    DefenseSpec("spectral-signatures", "remove rows with outlying spectral scores per class (budget 1.5 eps "
                "or validation threshold), retrain (Tran, Li, Madry 2018)", SpectralConfig, spectral_defense, kind="filter"),
    DefenseSpec("activation-clustering", "2-means per class on penultimate activations, remove the cluster "
                "flagged by size, silhouette or the validation rule, retrain (Chen et al. 2018)", ActivationClusteringConfig, activation_clustering_defense,
                kind="filter"),
    DefenseSpec("strip", "reject test inputs whose predictions stay confident under blending with clean images; "
                "threshold = frr-quantile on clean validation inputs (Gao et al. 2019)", StripConfig, strip_defense,
                kind="detector"),
    DefenseSpec("neural-cleanse", "reverse-engineer a minimal trigger per label on validation images, flag outlying "
                "small masks (MAD), unlearn their triggers (Wang et al. 2019)", NeuralCleanseConfig,
                neural_cleanse_defense, kind="detector"),
):
    DEFENSES.register(_spec.name)(_spec)


__all__ = [
    "DEFENSES", "DefenseSpec", "ChannelMask", "DefenseOutcome", "FinePruningConfig", "PruningResult",
    "activation_point", "channel_means", "prune_order", "pruning_curve", "plot_pruning_curve", "fine_tune",
    "prune_defense", "fine_tune_defense", "fine_prune", "FilterContext", "SpectralConfig",
    "ActivationClusteringConfig", "spectral_defense", "activation_clustering_defense", "StripConfig",
    "NeuralCleanseConfig", "RejectingClassifier", "StripGuard", "strip_defense", "neural_cleanse_defense",
]
