"""Targets from one ClusterMatch subpopulation (Jagielski et al., CCS 2021, Sec. 4.1 and Table 10):
the attacker's rows (the training set) are clustered in the clean model's feature space (PCA to
``pca_dims``, k-means with ``clusters`` centroids: :func:`poisonlab.subpop.subpopulations.fit_cluster_match`),
the qualifying test rows are assigned to the nearest centroid, one cluster holding at least
``n`` of them is drawn at random, and the ``n`` targets are drawn from it. Such targets share
their features, so one brew can move them together; random targets do not."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError


def cluster_targets(train: Any, test: Any, candidates: np.ndarray, n: int, clusters: int, pca_dims: int,
                    layer: str, reference: Any, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` target rows from one ClusterMatch cluster of the ``candidates`` test rows, and what was chosen."""
    from ..defenses.filtering import representations
    from ..subpop.subpopulations import fit_cluster_match

    model = reference.model
    fitted = fit_cluster_match(representations(model, train.x, layer), clusters, pca_dims or None,
                               seed=int(rng.integers(2 ** 31)))
    assigned = fitted.assign(representations(model, test.x[torch.from_numpy(candidates)], layer))
    counts = np.bincount(assigned, minlength=fitted.n_clusters)
    big = np.flatnonzero(counts >= n)
    if len(big) == 0:
        raise PoisonlabError(f"no ClusterMatch cluster holds {n} qualifying test rows (the largest holds "
                             f"{int(counts.max())}); lower attack.targets.n or attack.targets.clusters")
    k = int(rng.choice(big))
    rows = rng.choice(candidates[assigned == k], size=n, replace=False).astype(np.int64)
    return torch.from_numpy(rows), {"target_cluster": k, "target_cluster_size": int(counts[k]),
                                    "clusters_with_enough_targets": int(len(big))}
