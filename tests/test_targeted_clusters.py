"""Targets from one ClusterMatch cluster (Jagielski et al. 2021, Table 10's selection)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.pipeline.context import Reference
from poisonlab.subpop.subpopulations import fit_cluster_match
from poisonlab.targeted import RandomNoise


def _blobs(seed: int = 0) -> tuple[Dataset, Dataset, Reference]:
    """Rows in three tight blobs of 2-D features (the model reads them unchanged before its last layer)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])

    def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        which = rng.integers(0, 3, n)
        x = centres[which] + rng.normal(0, 0.1, (n, 2))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(which % 2 + (which == 2) * 0, dtype=torch.int64)

    xtr, ytr = rows(90)
    xte, yte = rows(60)
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    return (Dataset(xtr, ytr, ["a", "b"]), Dataset(xte, yte, ["a", "b"]),
            Reference(model, None, torch.device("cpu"), 0, Dataset(xte, yte, ["a", "b"])))


def test_cluster_targets_come_from_one_cluster():
    train, test, ref = _blobs()
    attack = RandomNoise(poison_class=1, targets={"select": "cluster", "n": 4, "clusters": 3, "pca_dims": 0,
                                                  "correct_only": False, "layer": "0"}, budget=0.1)
    pc, rows = attack.choose(train, ref, np.random.default_rng(0))
    assert pc == 1 and len(rows) == 4 and len(set(rows.tolist())) == 4
    assert bool((test.y[rows] != 1).all())  # never of the poison class
    fitted = fit_cluster_match(train.x.double().numpy(), 3, None, seed=0)
    blob = fitted.assign(test.x[rows].double().numpy())
    assert len(set(blob.tolist())) == 1  # all four in one blob
    assert attack.report_["target_cluster_size"] >= 4
    assert attack.report_["clusters_with_enough_targets"] >= 1
    again = RandomNoise(poison_class=1, targets={"select": "cluster", "n": 4, "clusters": 3, "pca_dims": 0,
                                                 "correct_only": False, "layer": "0"}, budget=0.1)
    assert again.choose(train, ref, np.random.default_rng(0))[1].tolist() == rows.tolist()


def test_no_cluster_large_enough_is_one_line():
    train, _, ref = _blobs()
    attack = RandomNoise(poison_class=1, targets={"select": "cluster", "n": 50, "clusters": 3, "pca_dims": 0,
                                                  "correct_only": False, "layer": "0"}, budget=0.1)
    with pytest.raises(PoisonlabError, match=r"^no ClusterMatch cluster holds 50 qualifying test rows \(the largest "
                                             r"holds \d+\); lower attack.targets.n or attack.targets.clusters$"):
        attack.choose(train, ref, np.random.default_rng(0))
    with pytest.raises(PoisonlabError, match=r"^attack.targets.clusters must be"):
        RandomNoise(targets={"select": "cluster", "clusters": 0})
