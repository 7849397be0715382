"""Finding subpopulations: FeatureMatch and ClusterMatch (Jagielski et al., CCS 2021, Sec. 4.1).

FeatureMatch: a subpopulation is one combination of values of chosen categorical
features (for Adult: education, race, sex), kept when its test-set size is within bounds.
ClusterMatch: a subpopulation is one k-means cluster of the attacker's data, clustered
in a PCA projection of some representation (raw features or a model's embeddings);
membership of any row is its nearest centroid.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import PoisonlabError, did_you_mean


@dataclass(frozen=True)
class Subpopulation:
    """One subpopulation and what deciding membership needs.

    ``kind="feature"``: ``features`` holds ``(column, value)`` pairs, all of which must match.
    ``kind="cluster"``: ``cluster`` is the centroid index of a :class:`ClusterMatch`.
    ``test_count`` / ``attacker_count`` are the member counts found when it was selected.
    """

    id: str
    kind: Literal["feature", "cluster"]
    description: str
    features: tuple[tuple[str, Any], ...] = ()
    cluster: int | None = None
    test_count: int = 0
    attacker_count: int = 0


def _py(v: Any) -> Any:
    """A numpy scalar as the plain Python value (so descriptions read ``HS-grad``, not ``np.str_``)."""
    return v.item() if isinstance(v, np.generic) else v


def _check_bounds(min_test: int, max_test: int | None) -> None:
    if min_test < 0:
        raise PoisonlabError(f"min_test must be >= 0, got {min_test}")
    if max_test is not None and max_test < 0:
        raise PoisonlabError(f"max_test must be >= 0, got {max_test}")
    if max_test is not None and min_test > max_test:
        raise PoisonlabError(f"min_test={min_test} is larger than max_test={max_test}; pass min_test <= max_test")


def _columns(meta: Mapping[str, np.ndarray], features: Sequence[str], which: str) -> list[np.ndarray]:
    cols = []
    for f in features:
        if f not in meta:
            raise PoisonlabError(
                f"unknown feature '{f}' in {which} metadata{did_you_mean(f, list(meta))}; "
                f"known: {', '.join(sorted(meta)) or '(none)'}")
        cols.append(np.asarray(meta[f]))
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise PoisonlabError(f"{which} metadata columns {list(features)} have different lengths {sorted(lengths)}")
    return cols


def feature_match(meta_attacker: Mapping[str, np.ndarray], meta_test: Mapping[str, np.ndarray],
                  features: Sequence[str], min_test: int = 10, max_test: int | None = 100,
                  min_attacker: int = 1) -> list[Subpopulation]:
    """FeatureMatch (Sec. 4.1): every value combination of ``features`` seen in the test set.

    Kept when ``min_test <= test count <= max_test`` (``max_test=None``: no upper bound) and
    the attacker has at least ``min_attacker`` rows of it (poisons are drawn from those
    rows). Values are compared with ``==``. Sorted by description.

    >>> mt = {"sex": np.array(["F", "F", "M"]), "race": np.array(["A", "A", "B"])}
    >>> [s.description for s in feature_match(mt, mt, ["sex", "race"], min_test=1, max_test=None)]
    ['sex=F, race=A', 'sex=M, race=B']
    """
    features = list(features)
    if not features:
        raise PoisonlabError("feature_match needs at least one feature name")
    if len(set(features)) != len(features):
        raise PoisonlabError(f"feature names repeat in {features}; list each once")
    _check_bounds(min_test, max_test)
    test_cols = _columns(meta_test, features, "test")
    att_cols = _columns(meta_attacker, features, "attacker")
    test_counts = Counter(tuple(_py(v) for v in row) for row in zip(*test_cols))
    att_counts = Counter(tuple(_py(v) for v in row) for row in zip(*att_cols))
    out = []
    for combo, n_test in test_counts.items():
        n_att = att_counts.get(combo, 0)
        if n_test < min_test or (max_test is not None and n_test > max_test) or n_att < min_attacker:
            continue
        pairs = tuple(zip(features, combo))
        out.append(Subpopulation(
            id="feature:" + ";".join(f"{f}={v}" for f, v in pairs), kind="feature",
            description=", ".join(f"{f}={v}" for f, v in pairs), features=pairs,
            test_count=n_test, attacker_count=n_att))
    return sorted(out, key=lambda s: s.description)


def membership(sub: Subpopulation, meta: Mapping[str, np.ndarray] | None = None, *,
               clusters: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the rows in ``sub``.

    Feature subpopulations: rows of ``meta`` equal to every ``(column, value)`` pair.
    Cluster subpopulations: rows whose ``clusters`` entry (from :meth:`ClusterMatch.assign`)
    is ``sub.cluster``.

    >>> s = Subpopulation("f", "feature", "sex=F", features=(("sex", "F"),))
    >>> membership(s, {"sex": np.array(["F", "M", "F"])}).tolist()
    [True, False, True]
    """
    if sub.kind == "cluster":
        if clusters is None:
            raise PoisonlabError(f"subpopulation '{sub.id}' is a cluster; pass clusters=ClusterMatch.assign(repr)")
        return np.asarray(clusters) == sub.cluster
    if meta is None:
        raise PoisonlabError(f"subpopulation '{sub.id}' is feature-based; pass the rows' metadata dict")
    names = [f for f, _ in sub.features]
    cols = _columns(meta, names, "row")
    mask = np.ones(len(cols[0]) if cols else 0, dtype=bool)
    for col, (_, value) in zip(cols, sub.features):
        mask &= np.asarray(col == value, dtype=bool)
    return mask


def _as_2d(rep: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    a = rep.detach().cpu().numpy() if isinstance(rep, torch.Tensor) else np.asarray(rep)
    if a.ndim < 2:
        raise PoisonlabError(f"{what} must have one row per example (2-D or more), got shape {a.shape}")
    a = a.reshape(len(a), -1).astype(np.float64)
    if not np.isfinite(a).all():
        raise PoisonlabError(f"{what} contains NaN or infinite values; clean or impute them first")
    return a


@dataclass
class ClusterMatch:
    """A fitted ClusterMatch (Sec. 4.1): optional PCA projection plus k-means centroids.

    ``mean``/``components`` are ``None`` when no PCA is used. ``attacker_counts[k]`` is
    the number of attacker rows assigned to centroid k.
    """

    centroids: np.ndarray
    mean: np.ndarray | None
    components: np.ndarray | None
    n_features: int
    attacker_counts: np.ndarray
    seed: int

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    def transform(self, rep: np.ndarray | torch.Tensor) -> np.ndarray:
        """Rows flattened and projected into the space the centroids live in."""
        a = _as_2d(rep, "representation")
        if a.shape[1] != self.n_features:
            raise PoisonlabError(
                f"representation has {a.shape[1]} features but the clustering was fit on {self.n_features}")
        return a if self.components is None else (a - self.mean) @ self.components.T

    def assign(self, rep: np.ndarray | torch.Tensor) -> np.ndarray:
        """Index of the nearest centroid for each row (ties: lowest index)."""
        z = self.transform(rep)
        d2 = (z * z).sum(1)[:, None] - 2.0 * z @ self.centroids.T + (self.centroids ** 2).sum(1)[None, :]
        return d2.argmin(axis=1).astype(np.int64)

    def membership(self, sub: Subpopulation, rep: np.ndarray | torch.Tensor) -> np.ndarray:
        """Boolean mask of the rows of ``rep`` that fall into cluster ``sub``."""
        return membership(sub, clusters=self.assign(rep))

    def subpopulations(self, test_rep: np.ndarray | torch.Tensor, min_test: int = 1,
                       max_test: int | None = None, min_attacker: int = 1) -> list[Subpopulation]:
        """One subpopulation per cluster, kept when its test-set count is in ``[min_test, max_test]``
        and it holds at least ``min_attacker`` attacker rows; ordered by cluster index."""
        _check_bounds(min_test, max_test)
        counts = np.bincount(self.assign(test_rep), minlength=self.n_clusters)
        out = []
        for k in range(self.n_clusters):
            n_test, n_att = int(counts[k]), int(self.attacker_counts[k])
            if n_test < min_test or (max_test is not None and n_test > max_test) or n_att < min_attacker:
                continue
            out.append(Subpopulation(id=f"cluster:{k}", kind="cluster", description=f"cluster {k}",
                                     cluster=k, test_count=n_test, attacker_count=n_att))
        return out


def fit_cluster_match(attacker_repr: np.ndarray | torch.Tensor, n_clusters: int = 100,
                      pca_dims: int | None = 10, seed: int = 0) -> ClusterMatch:
    """Fit ClusterMatch (Sec. 4.1) on the attacker's representations (rows flattened).

    PCA: centred SVD via numpy, keeping ``pca_dims`` components, each signed so its
    largest-magnitude loading is positive (deterministic). ``pca_dims`` ``None`` or 0: raw
    features. Then ``sklearn.cluster.KMeans(n_clusters, n_init=10, random_state=seed)``.
    """
    from sklearn.cluster import KMeans

    x = _as_2d(attacker_repr, "attacker representation")
    n, d = x.shape
    if n_clusters < 1:
        raise PoisonlabError(f"n_clusters must be >= 1, got {n_clusters}")
    if n_clusters > n:
        raise PoisonlabError(f"n_clusters={n_clusters} is more than the {n} attacker rows; use fewer clusters")
    mean = components = None
    z = x
    if pca_dims:
        if pca_dims < 0:
            raise PoisonlabError(f"pca_dims must be >= 0 or None, got {pca_dims}")
        if pca_dims > d:
            raise PoisonlabError(f"pca_dims={pca_dims} exceeds the {d} features; use pca_dims <= {d} or None")
        if pca_dims > n:
            raise PoisonlabError(f"pca_dims={pca_dims} exceeds the {n} attacker rows; use pca_dims <= {n}")
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        components = vt[:pca_dims].copy()
        signs = np.sign(components[np.arange(pca_dims), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        z = (x - mean) @ components.T
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(z)
    centroids = np.asarray(km.cluster_centers_, dtype=np.float64)
    fitted = ClusterMatch(centroids, mean, components, d, np.zeros(n_clusters, dtype=np.int64), seed)
    fitted.attacker_counts = np.bincount(fitted.assign(x), minlength=n_clusters)
    return fitted
