"""Filtering defenses as scikit-learn estimators on representations you already have.

:class:`SpectralSignatures` (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636) and
:class:`ActivationClustering` (Chen et al. 2018, arXiv 1811.03728) follow scikit-learn's
habits: the constructor stores its parameters (``get_params``/``set_params``/``clone`` work),
``fit(features, labels, val_features=None, val_labels=None)`` decides and returns ``self``,
and the results are ``scores_`` (per-row suspicion), ``mask_`` (bool, the rows to remove)
and ``per_class_`` (each class's details). ``features`` are a model's representations of
its own training rows (e.g. :func:`~poisonlab.defenses.filtering.representations`), grouped
by the training ``labels``.

There is one set of defaults and one set of checks: those of the registered defenses'
config classes (``DEFENSES.get("spectral-signatures").config``), and ``fit`` calls the same
functions (:func:`~.spectral.spectral_signatures`,
:func:`~.activation_clustering.activation_clustering`) with the same arguments as the
registered defense, so ``fit(reprs, labels).mask_`` is exactly the rows it removes.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(100, 4)); x[:3, 0] += 40
>>> SpectralSignatures(epsilon=0.02).fit(x, np.zeros(100, dtype=int)).mask_[:4].tolist()
[True, True, True, False]
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ..checks import SEED_MAX
from ..errors import PoisonlabError, shown
from .activation_clustering import activation_clustering
from .filtering import FilterResult, check_representations
from .registry import DEFENSES
from .spectral import spectral_signatures

__all__ = ["ActivationClustering", "SpectralSignatures"]


def _defaults(name: str) -> dict[str, Any]:
    """The defaults of registered defense ``name``'s config dataclass."""
    return {f.name: f.default for f in dataclasses.fields(DEFENSES.get(name).config)}


_SS = _defaults("spectral-signatures")
_AC = _defaults("activation-clustering")


def _checked(features: Any, labels: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return check_representations(features, labels)
    except PoisonlabError as exc:
        raise PoisonlabError(f"{where}: {exc}") from None


class _FilterEstimator(BaseEstimator):
    """What both estimators share: checked inputs, the registered config, the fitted attributes."""

    _defense = ""
    _not_config: tuple[str, ...] = ()

    def _config(self) -> Any:
        """The registered defense's config of these parameters, checked by its own ``validate``."""
        params = {k: v for k, v in self.get_params().items() if k not in self._not_config}
        return DEFENSES.get(self._defense).from_config(params, where=type(self).__name__)

    def _decide(self, cfg: Any, x: np.ndarray, y: np.ndarray, xv: np.ndarray | None,
                yv: np.ndarray | None) -> FilterResult:
        raise NotImplementedError

    def fit(self, features: Any, labels: Any, val_features: Any = None, val_labels: Any = None) -> Any:
        """Score the rows of ``features`` (N, D) by class of ``labels`` (N,) and decide which to
        remove; ``val_features``/``val_labels`` (clean validation rows) are read by
        ``rule="validation"`` only. Returns ``self``."""
        name = type(self).__name__
        cfg = self._config()
        x, y = _checked(features, labels, f"{name}.fit")
        xv = yv = None
        if cfg.rule == "validation":
            if val_features is None or val_labels is None:
                raise PoisonlabError(f"{name}(rule='validation').fit needs val_features and val_labels "
                                     f"(representations of clean validation rows)")
            xv, yv = _checked(val_features, val_labels, f"{name}.fit (validation rows)")
            if xv.shape[1] != x.shape[1]:
                raise PoisonlabError(f"{name}.fit: val_features have {xv.shape[1]} columns but features have "
                                     f"{x.shape[1]}; take both from the same layer")
        result = self._decide(cfg, x, y, xv, yv)
        self.scores_ = result.scores
        self.mask_ = result.remove
        self.per_class_ = result.details.get("classes", {})
        self.details_ = result.details
        self.classes_ = np.unique(y)
        self.n_features_in_ = x.shape[1]
        self.n_removed_ = result.n_removed
        return self


class SpectralSignatures(_FilterEstimator):
    """Spectral Signatures (Tran, Li, Madry 2018, Algorithm 1): per class, the squared projection
    on the top singular direction of the centred representations; ``rule="budget"`` removes the
    ``round(removal_factor * epsilon * n_c)`` highest of each class, ``rule="validation"`` the
    rows above the clean validation threshold (a ``false_removal_rate`` share of validation rows
    exceed it). See :mod:`poisonlab.defenses.spectral`.

    ``per_class_[c]``: ``n``, ``removed``, ``singular_value``, ``threshold``, ``direction``.
    """

    _defense = "spectral-signatures"

    def __init__(self, epsilon: float = _SS["epsilon"], removal_factor: float = _SS["removal_factor"],
                 rule: str = _SS["rule"], false_removal_rate: float = _SS["false_removal_rate"]) -> None:
        self.epsilon = epsilon
        self.removal_factor = removal_factor
        self.rule = rule
        self.false_removal_rate = false_removal_rate

    def _decide(self, cfg: Any, x: np.ndarray, y: np.ndarray, xv: np.ndarray | None,
                yv: np.ndarray | None) -> FilterResult:
        return spectral_signatures(x, y, cfg.epsilon, cfg.removal_factor, cfg.rule, xv, yv, cfg.false_removal_rate)


class ActivationClustering(_FilterEstimator):
    """Activation Clustering (Chen et al. 2018, Sec. 4): per class, reduce to ``dims`` (FastICA or
    PCA), 2-means, and flag the smaller cluster by relative size (``rule="size"``), silhouette
    (``rule="silhouette"``), or the cluster the clean validation rows avoid
    (``rule="validation"``). ``random_state`` seeds FastICA/PCA and KMeans (the registered
    defense uses the experiment's seed). See :mod:`poisonlab.defenses.activation_clustering`.

    ``per_class_[c]``: ``n``, ``dims``, ``sizes``, ``relative_size``, ``silhouette``, ``flagged``,
    ``warnings``; ``cluster_``: per row 0 (larger cluster), 1 (smaller) or -1 (not clustered).
    """

    _defense = "activation-clustering"
    _not_config = ("random_state",)

    def __init__(self, dims: int = _AC["dims"], reduce: str = _AC["reduce"], rule: str = _AC["rule"],
                 size_threshold: float = _AC["size_threshold"],
                 silhouette_threshold: float = _AC["silhouette_threshold"],
                 validation_ratio: float = _AC["validation_ratio"], random_state: int = 0) -> None:
        self.dims = dims
        self.reduce = reduce
        self.rule = rule
        self.size_threshold = size_threshold
        self.silhouette_threshold = silhouette_threshold
        self.validation_ratio = validation_ratio
        self.random_state = random_state

    def _config(self) -> Any:
        seed = self.random_state
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
            raise PoisonlabError(f"ActivationClustering.random_state must be an integer in 0..{SEED_MAX} "
                                 f"(it seeds FastICA/PCA and KMeans), got {shown(seed)}")
        return super()._config()

    def _decide(self, cfg: Any, x: np.ndarray, y: np.ndarray, xv: np.ndarray | None,
                yv: np.ndarray | None) -> FilterResult:
        result = activation_clustering(x, y, cfg.dims, cfg.reduce, cfg.rule, cfg.size_threshold,
                                       cfg.silhouette_threshold, int(self.random_state), xv, yv, cfg.validation_ratio)
        self.cluster_ = result.details["cluster"]
        return result
