"""Deep k-NN (Peri et al., "Deep k-NN Defense against Clean-label Data Poisoning Attacks", ECCV
Workshops 2020, arXiv 1909.13374): a training row is removed when its label is not the plurality
label of its ``k`` nearest neighbours (Euclidean, itself excluded) in the suspect model's
feature space (the input of its last linear layer); the victim is retrained on the rest.
Clean-label poisons that collide with a target of another class sit among that class's rows
and are outvoted. Ties: a row whose own label is among the most frequent labels is kept. The
paper's advice: ``k`` well above the number of poisons per target (default 50)."""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..checks import MAX_BATCH, need_int
from .filter_defenses import _filter
from .filtering import FilterResult, check_representations
from .pruning_config import DefenseOutcome
from .registry import DefenseInputs


@dataclass
class DeepKnnConfig:
    """``defenses:`` keys of Deep k-NN: ``k`` neighbours (50), ``layer`` (``auto``: the input of
    the last Linear layer), ``batch_size`` of the forward passes."""

    name: str = "deep-knn"
    label: str | None = None
    k: int = 50
    layer: str | None = "auto"
    batch_size: int = 1024

    def validate(self, where: str = "defense") -> None:
        need_int(self.k, f"{where}.k", 1, 100_000, "neighbours")
        need_int(self.batch_size, f"{where}.batch_size", 1, MAX_BATCH)


def deep_knn(reprs: np.ndarray, labels: np.ndarray, k: int = 50) -> FilterResult:
    """Per row: does its label lose the plurality vote of its ``k`` nearest other rows? Scores are
    the share of neighbours with another label; ``details["plurality"]`` the winning label."""
    from sklearn.neighbors import NearestNeighbors

    x, y = check_representations(reprs, labels)
    k = min(int(k), len(x) - 1)
    if k < 1:
        keep = np.ones(len(x), bool)
        return FilterResult(np.zeros(len(x)), ~keep, {"k": k, "plurality": y.copy()})
    _, nbrs = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
    # drop each row itself (the first neighbour unless duplicates tie with it)
    others = np.array([row[row != i][:k] if (row == i).any() else row[:k] for i, row in enumerate(nbrs)])
    votes = np.zeros((len(x), int(y.max()) + 1), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(x)), k), y[others].ravel()), 1)
    own = votes[np.arange(len(x)), y]
    remove = own < votes.max(1)
    return FilterResult(1.0 - own / k, remove, {"k": k, "plurality": votes.argmax(1)})


def deep_knn_defense(cfg: DeepKnnConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """Deep k-NN on the suspect model's features of its training rows, then retraining on the kept rows."""
    return _filter(ctx, cfg.layer, cfg.batch_size, lambda r, y, rv, yv: deep_knn(r, y, cfg.k), cfg.label or cfg.name,
                   False)
