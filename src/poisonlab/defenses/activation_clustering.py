"""Activation Clustering (Chen et al. 2018, arXiv 1811.03728, Sec. 4).

For each class (by the *training* labels), the representations of its rows are reduced to
``dims`` dimensions (FastICA as in the paper, or PCA) and split into two clusters by
2-means. Poison relabelled to a class forms its own small, well-separated cluster there;
a clean class splits into two halves of similar size. The smaller cluster of a class is
flagged (all its rows removed) when

* ``rule="size"``: its relative size (rows / class rows) is at most ``size_threshold``
  (the paper's "relative size" analysis; 0.35 by default), or
* ``rule="silhouette"``: the silhouette score of the 2-clustering (on the reduced data) is at
  least ``silhouette_threshold`` (the paper's "silhouette score" analysis), or
* ``rule="validation"`` (an extension for a defender holding a small clean validation split):
  the class's clean validation rows are reduced by the same fitted transform and assigned to
  the nearest of the two centroids; a cluster is flagged when its share of the validation
  rows is below ``validation_ratio`` times its share of the training rows. Clean rows land in
  both clusters in proportion; a cluster of poisons receives almost no validation rows,
  whatever its size. This flags a poison cluster even when it is the *larger* one (a
  target class that is half poison), which neither paper rule can do. Classes with fewer than
  ``MIN_VALIDATION_ROWS`` validation rows are left alone and noted.

The score of a row is 1.0 in a flagged cluster, else 0.0. The number of dimensions is
``min(dims, n_features, n_rows - 1, rank)`` where rank is the numerical rank of the centred
class (more components than that would whiten directions with no variance). Classes with
fewer than 3 rows, or whose rows are all equal, are not clustered (nothing removed).

:func:`exclusionary_reclassification` is the paper's Sec. 4.3 check of one cluster: the
caller trains a model without the cluster and classifies the cluster with it.

Determinism: FastICA/PCA and KMeans (``n_init=10``) use ``random_state=seed``; clusters are
renumbered so that 1 is the smaller one (on equal sizes, 0 holds the class's first row).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..checks import is_number
from ..errors import PoisonlabError, did_you_mean, shown
from .filtering import FilterResult, check_representations

__all__ = ["MIN_VALIDATION_ROWS", "REDUCTIONS", "RULES", "activation_clustering", "exclusionary_reclassification"]

REDUCTIONS = ("ica", "pca")
RULES = ("size", "silhouette", "validation")
MIN_VALIDATION_ROWS = 10
SILHOUETTE_MAX_ROWS = 10_000  # larger classes: silhouette on a seeded sample of this many rows


def _is_tall(centred: np.ndarray) -> bool:
    """More than twice as many rows as features: the D x D covariance route pays."""
    n, d = centred.shape
    return n > 2 * d


class _CovariancePCA:
    """PCA of a tall centred class from its covariance's eigendecomposition, computed once and
    shared with the rank check (:func:`_dims_used`). The same arithmetic as scikit-learn's
    ``PCA(svd_solver="covariance_eigh")`` (covariance ``(X'X - n m m') / (n - 1)``, ``eigh``,
    eigenvalues clipped at 0, signs flipped so each component's largest entry is positive), so
    the same components up to rounding. FastICA keeps its own SVD whitening: when it does not
    converge, its output moves with any rounding change (eigh whitening changed which MNIST rows
    it flagged)."""

    def __init__(self, centred: np.ndarray) -> None:
        n = len(centred)
        self.mean_ = centred.mean(0)
        cov = centred.T @ centred
        cov -= n * np.outer(self.mean_, self.mean_)
        cov /= n - 1
        w, v = np.linalg.eigh(cov)
        self.variances_ = np.clip(w[::-1], 0.0, None)
        self.singular_values_ = np.sqrt(self.variances_ * (n - 1))
        self.vectors_ = v[:, ::-1]
        self.components_: np.ndarray | None = None

    def use(self, d: int) -> "_CovariancePCA":
        """Keep the top ``d`` components, with scikit-learn's sign convention."""
        comp = self.vectors_[:, :d].T.copy()
        signs = np.sign(comp[np.arange(d), np.argmax(np.abs(comp), axis=1)])
        signs[signs == 0] = 1.0
        self.components_ = comp * signs[:, None]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        assert self.components_ is not None, "call use(d) first"
        return (x - self.mean_) @ self.components_.T


def _reduce(centred: np.ndarray, d: int, how: str, seed: int,
            cov_pca: _CovariancePCA | None = None) -> tuple[np.ndarray, Any, list[str]]:
    """``centred`` reduced to ``d`` columns by FastICA or PCA (from ``cov_pca`` when given, for a
    tall class), the fitted transform, and the warnings raised on the way (e.g. ICA not
    converging) as text."""
    from sklearn.decomposition import PCA, FastICA

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z, fitted = None, None
        if how == "ica":
            try:
                fitted = FastICA(n_components=d, random_state=seed, whiten="unit-variance")
                z = fitted.fit_transform(centred)
            except (ValueError, np.linalg.LinAlgError) as exc:
                notes.append(f"FastICA failed ({str(exc).splitlines()[0]}); used PCA")
            if z is not None and not np.isfinite(z).all():
                notes.append("FastICA gave non-finite components; used PCA")
                z = None
        if z is None and cov_pca is not None:
            fitted = cov_pca.use(d)
            z = fitted.transform(centred)
        elif z is None:
            fitted = PCA(n_components=d, svd_solver="full", random_state=seed)
            z = fitted.fit_transform(centred)
    return z, fitted, notes + [str(w.message).splitlines()[0] for w in caught]


def _dims_used(centred: np.ndarray, dims: int, cov_pca: _CovariancePCA | None = None) -> int:
    """``min(dims, n_features, n_rows - 1, rank)``, the rank counting singular values above
    ``s_max * max(n, D) * eps``. For a tall class the singular values come from the
    covariance's eigenvalues first (``cov_pca``, computed here when not given): when the ``dims``-th is above ``1e-6 * s_max`` (far above both
    the rank threshold and the ~1e-8 relative error of that route) the rank is at least
    ``dims`` and no SVD is needed; otherwise the exact SVD decides."""
    n, d = centred.shape
    cap = min(dims, d, n - 1)
    if cap < 1:
        return max(cap, 0)
    if _is_tall(centred):
        sv = (cov_pca or _CovariancePCA(centred)).singular_values_
        if sv[0] > 0 and sv[cap - 1] > 1e-6 * sv[0]:
            return cap
    sv = np.linalg.svd(centred, compute_uv=False)
    rank = int((sv > sv[0] * max(n, d) * np.finfo(np.float64).eps).sum()) if sv[0] > 0 else 0
    return min(cap, rank)


def _two_means(z: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-means labels of ``z`` and the two centroids, renumbered so that 1 is the smaller
    cluster (ties: row 0 in cluster 0)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z)
    lab, centres = km.labels_.astype(np.int64), km.cluster_centers_
    sizes = np.bincount(lab, minlength=2)
    if sizes[0] < sizes[1] or (sizes[0] == sizes[1] and lab[0] == 1):
        lab, centres = 1 - lab, centres[::-1]
    return lab, centres


def _nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of every row (ties: cluster 0)."""
    d = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return np.argmin(d, axis=1).astype(np.int64)


def _silhouette(z: np.ndarray, lab: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(lab)) < 2:
        return math.nan
    sample = SILHOUETTE_MAX_ROWS if len(z) > SILHOUETTE_MAX_ROWS else None
    return float(silhouette_score(z, lab, sample_size=sample, random_state=seed))


def activation_clustering(reprs: np.ndarray, labels: np.ndarray, dims: int = 10, reduce: str = "ica",
                          rule: str = "size", size_threshold: float = 0.35, silhouette_threshold: float = 0.10,
                          seed: int = 0, val_reprs: np.ndarray | None = None, val_labels: np.ndarray | None = None,
                          validation_ratio: float = 0.5) -> FilterResult:
    """Per class: reduce to ``dims`` (FastICA or PCA), 2-means, flag the smaller cluster by its
    relative size or by the silhouette score (Chen et al. 2018), or flag the cluster that the
    clean validation rows avoid (``rule="validation"``).

    ``details``: the parameters, ``cluster`` (per row: 0 = larger cluster of its class, 1 =
    smaller, -1 = class not clustered) and ``classes``, mapping each class to ``n``, ``dims``
    (used), ``sizes`` ([larger, smaller]), ``relative_size`` (smaller / n), ``silhouette``,
    ``flagged`` and ``warnings`` (e.g. FastICA not converging); NaN/empty when not clustered.
    With the validation rule also ``n_val``, ``val_shares`` ([larger, smaller] cluster) and
    ``flagged_cluster`` (0, 1 or -1).
    """
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise PoisonlabError(f"dims must be a positive integer (the paper uses 10), got {shown(dims)}")
    if reduce not in REDUCTIONS:
        raise PoisonlabError(f"unknown reduce {shown(reduce)}{did_you_mean(str(reduce), REDUCTIONS)}; "
                             f"choose one of {', '.join(REDUCTIONS)}")
    if rule not in RULES:
        raise PoisonlabError(f"unknown rule {shown(rule)}{did_you_mean(str(rule), RULES)}; choose one of {', '.join(RULES)}")
    if not is_number(size_threshold) or not 0 < float(size_threshold) < 1:
        raise PoisonlabError(f"size_threshold must be in (0, 1), got {shown(size_threshold)}")
    if not is_number(silhouette_threshold) or not -1 <= float(silhouette_threshold) <= 1:
        raise PoisonlabError(f"silhouette_threshold must be in [-1, 1], got {shown(silhouette_threshold)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise PoisonlabError(f"seed must be an integer in [0, 2**32), got {shown(seed)}")
    xv = yv = None
    if rule == "validation":
        if val_reprs is None or val_labels is None:
            raise PoisonlabError("rule 'validation' needs the clean validation rows' representations and labels "
                                 "(val_reprs, val_labels); set data.val_fraction > 0")
        if not is_number(validation_ratio) or not 0 < float(validation_ratio) <= 1:
            raise PoisonlabError(f"validation_ratio must be in (0, 1], got {shown(validation_ratio)}")
        xv, yv = check_representations(val_reprs, val_labels)
    x, y = check_representations(reprs, labels)
    if xv is not None and xv.shape[1] != x.shape[1]:
        raise PoisonlabError(f"val_reprs have {xv.shape[1]} features but reprs have {x.shape[1]}; "
                             f"take both from the same layer")
    seed = int(seed)
    scores = np.zeros(len(y))
    cluster = np.full(len(y), -1, dtype=np.int64)
    classes: dict[int, dict[str, Any]] = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        info: dict[str, Any] = {"n": len(idx), "dims": 0, "sizes": [len(idx), 0], "relative_size": math.nan,
                                "silhouette": math.nan, "flagged": False, "warnings": []}
        classes[int(c)] = info
        if len(idx) < 3:
            continue
        if xv is not None:
            info.update(n_val=int((yv == c).sum()), val_shares=[math.nan, math.nan], flagged_cluster=-1)
            if info["n_val"] < MIN_VALIDATION_ROWS:
                info["warnings"] = [f"{info['n_val']} validation rows (< {MIN_VALIDATION_ROWS}): class left alone"]
                continue
        mean = x[idx].mean(0)
        centred = x[idx] - mean
        cov_pca = _CovariancePCA(centred) if _is_tall(centred) else None  # shared by the rank and PCA
        d = _dims_used(centred, int(dims), cov_pca)
        if d < 1:  # every row equal
            continue
        z, fitted, info["warnings"] = _reduce(centred, d, reduce, seed, cov_pca)
        lab, centres = _two_means(z, seed)
        cluster[idx] = lab
        sizes = np.bincount(lab, minlength=2)
        rel = float(sizes[1] / len(idx))
        sil = _silhouette(z, lab, seed) if rule == "silhouette" else math.nan  # only where a rule reads it
        which = 1  # the cluster a rule flags
        if rule == "size":
            flagged = rel <= float(size_threshold)
        elif rule == "silhouette":
            flagged = bool(sil >= float(silhouette_threshold))  # NaN compares False
        else:
            val_lab = _nearest(fitted.transform(xv[yv == c] - mean), centres)
            val_shares = np.bincount(val_lab, minlength=2) / len(val_lab)
            if sizes.min() > 0:
                ratios = val_shares / (sizes / len(idx))
                which = int(np.argmin(ratios))
                flagged = bool(ratios[which] < float(validation_ratio))
            else:  # one cluster only: nothing to tell apart
                flagged = False
            info.update(val_shares=[float(val_shares[0]), float(val_shares[1])],
                        flagged_cluster=which if flagged else -1)
        flagged = bool(flagged and sizes[which] > 0)
        info.update(dims=d, sizes=[int(sizes[0]), int(sizes[1])], relative_size=rel, silhouette=sil, flagged=flagged)
        if flagged:
            scores[idx[lab == which]] = 1.0
    details = {"dims": int(dims), "reduce": reduce, "rule": rule, "size_threshold": float(size_threshold),
               "silhouette_threshold": float(silhouette_threshold), "validation_ratio": float(validation_ratio),
               "seed": seed, "cluster": cluster,
               "classes": classes}
    return FilterResult(scores, scores > 0, details)


def exclusionary_reclassification(flagged_cluster_pred: np.ndarray, cluster_label: int,
                                  threshold: float = 1.0) -> tuple[bool, float]:
    """Decide whether a cluster is poison (Chen et al. 2018, Sec. 4.3, "exclusionary reclassification").

    ``flagged_cluster_pred`` are the predictions, for the rows of the cluster, of a model the
    caller trained *without* the cluster; ``cluster_label`` is the label those rows carry in
    the training set. With ``l`` = rows predicted as ``cluster_label`` and ``p`` = the largest
    number of rows predicted as any one *other* class, the paper keeps the cluster as
    legitimate when ``l / p > threshold`` (here ``l > threshold * p``, so ``p = 0`` is
    legitimate); otherwise it is poison, and the class behind ``p`` is its likely source
    class. ``threshold = 1`` asks the own label to beat every other class.

    Returns ``(is_poison, share_own_label)`` with ``share_own_label = l / len(cluster)``.

    >>> exclusionary_reclassification(np.array([3, 3, 1, 1, 1]), 3)
    (True, 0.4)
    """
    pred = np.asarray(flagged_cluster_pred.detach().cpu().numpy() if hasattr(flagged_cluster_pred, "detach")
                      else flagged_cluster_pred)
    if pred.ndim != 1 or pred.dtype.kind not in "iu":
        raise PoisonlabError(f"flagged_cluster_pred must be a 1-D array of predicted classes, "
                             f"got shape {pred.shape} dtype {pred.dtype}")
    if len(pred) == 0:
        raise PoisonlabError("flagged_cluster_pred is empty: the cluster has no rows to reclassify")
    if isinstance(cluster_label, bool) or not isinstance(cluster_label, (int, np.integer)):
        raise PoisonlabError(f"cluster_label must be a class index, got {shown(cluster_label)}")
    if not is_number(threshold) or float(threshold) < 0:
        raise PoisonlabError(f"threshold must be a non-negative number, got {shown(threshold)}")
    own = pred == cluster_label
    l_count = int(own.sum())
    _, other_counts = np.unique(pred[~own], return_counts=True)
    p_count = int(other_counts.max()) if len(other_counts) else 0
    legitimate = l_count > float(threshold) * p_count
    return (not legitimate), l_count / len(pred)
