"""The cell steps every family shares (poison -> fit the victim -> measure -> defend) and the
cell pool: each cell's draws depend on (seed, key, salt) only, a forked run equals the serial
run, and defenses run against a cell through the one defense dispatch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.attacks.base import PoisonResult
from poisonlab.data.base import Dataset
from poisonlab.defenses import DefenseOutcome, DefenseSpec
from poisonlab.defenses.registry import register_defense, unregister_defense
from poisonlab.errors import PoisonlabError
from poisonlab.pipeline.cell_pool import run_cells
from poisonlab.pipeline.cells import CellWork, run_cell

SEED, SALT = 7, 0x99


class Centroids(nn.Module):
    """Nearest class mean as a linear layer: logits 2 m_c.x - |m_c|^2."""

    def __init__(self, data: Dataset) -> None:
        super().__init__()
        means = torch.stack([data.x[data.y == c].mean(0) for c in range(data.num_classes)])
        self.fc = nn.Linear(data.x.shape[1], data.num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(2 * means)
            self.fc.bias.copy_(-(means ** 2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def blobs(n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, 2, generator=g) - 2, torch.randn(n, 2, generator=g) + 2])
    return Dataset(x, torch.cat([torch.zeros(n), torch.ones(n)]).long(), ["a", "b"])


TRAIN, TEST = blobs(40, 0), blobs(20, 1)
PICKED: dict[tuple, np.ndarray] = {}


def plan(key: tuple, rng: np.random.Generator) -> tuple[PoisonResult, int]:
    """Cell (k,): 10 * (k + 1) copies of class-0 rows, labelled 1, appended to the clean rows."""
    rows = rng.integers(0, 40, size=10 * (key[0] + 1))
    PICKED[key] = rows
    x = torch.cat([TRAIN.x, TRAIN.x[torch.from_numpy(rows)]])
    y = torch.cat([TRAIN.y, torch.ones(len(rows), dtype=torch.long)])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[len(TRAIN):] = True
    return PoisonResult(Dataset(x, y, TRAIN.classes), mask, torch.from_numpy(rows)), len(rows)


class ErrorOnClassZero:
    name, headline = "class-zero", {"clean_accuracy": "acc"}

    def measure(self, model, test, evaluation, batch_size, device, name):
        pred = model(test.x).argmax(1)
        return {"clean_accuracy": float((pred == test.y).float().mean()),
                "class0_error": float((pred[test.y == 0] != 0).float().mean()), "n_poison": evaluation}, {"pred": pred}

    def describe(self, evaluation):
        return {}


def work(defenses=()) -> CellWork:
    return CellWork(plan, lambda data, name: Centroids(data), ErrorOnClassZero(), TEST, SEED, list(defenses), salt=SALT)


def test_a_cell_draws_from_seed_key_and_salt_only():
    cell = run_cell(work(), (2,))
    expected = np.random.default_rng([SEED, 2, SALT]).integers(0, 40, size=30)
    assert np.array_equal(PICKED[(2,)], expected)
    assert cell.poison.n_poison == 30 and cell.metrics["n_poison"] == 30
    assert torch.equal(cell.poison.dataset.y[-30:], torch.ones(30, dtype=torch.long))
    # the victim is the centroid model of exactly the poisoned rows
    ref = Centroids(cell.poison.dataset)
    assert torch.equal(cell.model.fc.weight, ref.fc.weight) and cell.preds["pred"].tolist() == ref(TEST.x).argmax(1).tolist()


def test_forked_cells_equal_serial_cells_in_key_order():
    keys = [(k,) for k in range(4)]
    row = lambda cell: (cell.key, cell.poison.n_poison, cell.metrics["class0_error"], cell.preds["pred"].tolist())
    serial = run_cells(work(), keys, row, workers=1)
    assert [r[0] for r in serial] == keys and [r[1] for r in serial] == [10, 20, 30, 40]
    assert serial == run_cells(work(), keys, row, workers=2)
    # more label-1 copies of class-0 rows pull the class-1 mean towards class 0: error never falls
    errors = [r[2] for r in serial]
    assert errors == sorted(errors)
    with pytest.raises(PoisonlabError, match="workers must be >= 1, got 0"):
        run_cells(work(), keys, row, workers=0)


@dataclass
class DropAppended:
    name: str = "drop-appended"
    label: str | None = None

    def validate(self, where: str = "defense") -> None: ...


def drop_appended(cfg: DropAppended, ctx) -> DefenseOutcome:
    removed = np.zeros(len(ctx.train), dtype=bool)
    removed[len(TRAIN) - 5:] = True  # every poison and the last 5 clean rows
    return DefenseOutcome(ctx.retrain(ctx.train.subset(np.flatnonzero(~removed)), cfg.name), removed=removed)


def test_defend_runs_the_registered_dispatch_and_measures_like_the_victim():
    register_defense(DefenseSpec("drop-appended", "test", DropAppended, drop_appended, kind="filter",
                                 needs=frozenset({"retrain"})))
    try:
        cell = run_cell(work([("drop-appended", DropAppended())]), (1,))
    finally:
        unregister_defense("drop-appended")
    entry = cell.defended.metrics["drop-appended"]
    det = entry["detection"]
    assert (det["true_positives"], det["false_positives"], det["recall"]) == (20, 5, 1.0)
    assert det["fpr"] == pytest.approx(5 / 80)
    clean_rows = TRAIN.subset(torch.arange(len(TRAIN) - 5))
    ref_pred = Centroids(clean_rows)(TEST.x).argmax(1)
    assert entry["clean_accuracy"] == float((ref_pred == TEST.y).float().mean())
    assert cell.measured["drop-appended"]["n_poison"] == 20  # the defended model measured on the cell's evaluation
    assert [r["defense"] for r in cell.defended.rows] == ["none", "drop-appended"]
