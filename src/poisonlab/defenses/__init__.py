"""Defenses, registered once each by name in :data:`DEFENSES` (:mod:`.registry`).

Each entry is a :class:`DefenseSpec`: ``spec.from_config(raw)`` turns a ``defense:`` config
section into its validated config (one config dataclass per defense, one set of defaults,
documented in its docstring), and ``spec.run(cfg, ctx)`` takes a :class:`DefenseInputs`
(suspect model, poisoned training set and poison mask, ``retrain``, clean validation split,
test sets for the report, seed, device) and returns a :class:`DefenseOutcome` holding a
defended *copy* of the model (the suspect model is never modified), the rows it removed when
it removes rows, and its summary. Decisions read ``ctx.val`` (and the training set) only;
``ctx.test`` and ``ctx.attack_set`` are measured for the report. ``spec.kind`` is one of
:data:`KINDS`, ``spec.needs`` a subset of :data:`NEEDS`; :func:`check_needs` names a need the
experiment does not offer in one line. The BadNets experiment (:func:`poisonlab.defend.run_defenses`)
and the subpopulation sweep (:mod:`poisonlab.subpop.sweep`) run the same entries.

=====================  ================  ==========================================
name                   kind              needs
=====================  ================  ==========================================
pruning                model-repair      torch-layers, validation
fine-tuning            model-repair      torch-layers, validation
fine-pruning           model-repair      torch-layers, validation
spectral-signatures    filter            torch-layers, retrain (+ validation: rule validation)
activation-clustering  filter            torch-layers, retrain (+ validation: rule validation)
deep-knn               filter            torch-layers, retrain
oracle-filter          filter            retrain (a control: reads the poison mask)
random-filter          filter            retrain (a control: as many random rows as poisons)
trim                   robust-training   retrain
sever                  robust-training   retrain, row-gradients
certified              robust-training   binary-labels
strip                  input-detector    images, validation
neural-cleanse         model-repair      images, validation
=====================  ================  ==========================================
"""
from __future__ import annotations

from .control_filters import (OracleFilterConfig, RandomFilterConfig, oracle_filter_defense,
                              random_filter_defense)
from .deep_knn import DeepKnnConfig, deep_knn, deep_knn_defense
from .detector_defenses import (
    NeuralCleanseConfig,
    RejectingClassifier,
    StripConfig,
    StripGuard,
    neural_cleanse_defense,
    run_neural_cleanse,
    run_strip,
    strip_defense,
)
from .filter_defenses import (
    ActivationClusteringConfig,
    SpectralConfig,
    activation_clustering_defense,
    spectral_defense,
)
from .pruning import (
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
    run_fine_pruning,
    run_fine_tuning,
    run_pruning,
)
from .registry import (
    DEFENSES,
    KINDS,
    NEEDS,
    ConfiguredDefense,
    DefenseInputs,
    DefenseSpec,
    FilterContext,
    Offered,
    check_needs,
    offered_by,
    parse_defense_item,
    register_defense,
    unregister_defense,
)
from .robust_defenses import (
    CertifiedConfig,
    SeverConfig,
    SmoothedRidgeClassifier,
    TrimConfig,
    certified_defense,
    sever_defense,
    trim_defense,
)

_LAYERS_VAL = frozenset({"torch-layers", "validation"})
_FILTER = frozenset({"torch-layers", "retrain"})
_IMAGES_VAL = frozenset({"images", "validation"})

for _spec in (
    DefenseSpec("pruning", "prune dormant conv channels (CNN) or hidden units (MLP) until validation accuracy "
                "drops (Liu et al. 2018, 3.1)", FinePruningConfig, run_pruning, "model-repair", _LAYERS_VAL),
    DefenseSpec("fine-tuning", "fine-tune on clean validation data (Liu et al. 2018, 3.2 baseline)",
                FinePruningConfig, run_fine_tuning, "model-repair", _LAYERS_VAL),
    DefenseSpec("fine-pruning", "prune dormant conv channels (CNN) or hidden units (MLP), then fine-tune "
                "(Liu et al. 2018, 3.3)", FinePruningConfig, run_fine_pruning, "model-repair", _LAYERS_VAL),
    DefenseSpec("spectral-signatures", "remove rows with outlying spectral scores per class (budget 1.5 eps "
                "or validation threshold), retrain (Tran, Li, Madry 2018)", SpectralConfig, spectral_defense,
                "filter", _FILTER),
    DefenseSpec("activation-clustering", "2-means per class on penultimate activations, remove the cluster "
                "flagged by size, silhouette or the validation rule, retrain (Chen et al. 2018)",
                ActivationClusteringConfig, activation_clustering_defense, "filter", _FILTER),
    DefenseSpec("deep-knn", "remove rows whose label loses the plurality vote of their k nearest rows in feature "
                "space, retrain (Peri et al. 2020)", DeepKnnConfig, deep_knn_defense, "filter", _FILTER),
    DefenseSpec("oracle-filter", "control: remove exactly the poison rows, retrain (the most a filter can save)",
                OracleFilterConfig, oracle_filter_defense, "filter", frozenset({"retrain"})),
    DefenseSpec("random-filter", "control: remove as many random rows as there are poisons, retrain",
                RandomFilterConfig, random_filter_defense, "filter", frozenset({"retrain"})),
    DefenseSpec("trim", "fit, keep the (1 - eps) n rows of lowest loss, refit until stable: TRIM / ILTM "
                "(Jagielski et al. 2018; Shen & Sanghavi 2019)", TrimConfig, trim_defense, "robust-training",
                frozenset({"retrain"})),
    DefenseSpec("sever", "fit, remove the rows whose last-layer gradients project most on the top singular "
                "direction, refit (Diakonikolas et al. 2019)", SeverConfig, sever_defense, "robust-training",
                frozenset({"retrain", "row-gradients"})),
    DefenseSpec("certified", "ridge classifier smoothed over label noise, certified against flipped labels; "
                "binary labels (Rosenfeld et al. 2020)", CertifiedConfig, certified_defense, "robust-training",
                frozenset({"binary-labels"})),
    DefenseSpec("strip", "reject test inputs whose predictions stay confident under blending with clean images; "
                "threshold = frr-quantile on clean validation inputs (Gao et al. 2019)", StripConfig, run_strip,
                "input-detector", _IMAGES_VAL),
    DefenseSpec("neural-cleanse", "reverse-engineer a minimal trigger per label on validation images, flag outlying "
                "small masks (MAD), unlearn their triggers (Wang et al. 2019)", NeuralCleanseConfig,
                run_neural_cleanse, "model-repair", _IMAGES_VAL),
):
    register_defense(_spec)

from .estimators import ActivationClustering, SpectralSignatures  # noqa: E402  (after registration: reads defaults)


__all__ = [
    "DEFENSES",
    "DeepKnnConfig",
    "deep_knn",
    "KINDS",
    "NEEDS",
    "ActivationClustering",
    "ActivationClusteringConfig",
    "CertifiedConfig",
    "ChannelMask",
    "ConfiguredDefense",
    "DefenseInputs",
    "DefenseOutcome",
    "DefenseSpec",
    "FilterContext",
    "FinePruningConfig",
    "NeuralCleanseConfig",
    "Offered",
    "PruningResult",
    "RejectingClassifier",
    "SeverConfig",
    "SmoothedRidgeClassifier",
    "SpectralSignatures",
    "SpectralConfig",
    "StripConfig",
    "StripGuard",
    "TrimConfig",
    "activation_clustering_defense",
    "activation_point",
    "certified_defense",
    "channel_means",
    "check_needs",
    "fine_prune",
    "fine_tune",
    "fine_tune_defense",
    "neural_cleanse_defense",
    "offered_by",
    "parse_defense_item",
    "plot_pruning_curve",
    "prune_defense",
    "prune_order",
    "pruning_curve",
    "register_defense",
    "sever_defense",
    "spectral_defense",
    "strip_defense",
    "trim_defense",
    "unregister_defense",
]
