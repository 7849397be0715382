"""Extending poisonlab from a test file alone (issue 11): a toy attack family with its own
measure, a toy defense and a toy learner, each registered here in a few lines and run through
``poisonlab run``, a defense and ``poisonlab matrix`` with no core file edited."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch
import yaml
from torch import nn

from poisonlab.attacks import ATTACKS, PoisonResult
from poisonlab.cli import main
from poisonlab.data.base import Dataset
from poisonlab.defenses import DEFENSES, DefenseOutcome, DefenseSpec
from poisonlab.families import FAMILIES
from poisonlab.families.step_family import StepFamily
from poisonlab.measures import MEASURES
from poisonlab.models import MODELS, ModelSpec
from poisonlab.train import predict


# -- a toy family: flip the labels of the first rows to 0; measured by test error only (21 lines)
@ATTACKS.register("toy-flip")
class ToyFlip:
    name, family = "toy-flip", "toy"

    def __init__(self, rows: int) -> None:
        self.rows = rows

    @classmethod
    def from_config(cls, raw: dict) -> "ToyFlip":
        return cls(int(raw.get("rows", 5)))

    def check(self, train: Dataset) -> None: ...

    def poison(self, train: Dataset, rng) -> PoisonResult:
        idx = torch.arange(self.rows)
        x, y = torch.cat([train.x, train.x[idx]]), torch.cat([train.y, torch.zeros(self.rows, dtype=torch.long)])
        mask = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(self.rows, dtype=torch.bool)])
        return PoisonResult(Dataset(x, y, list(train.classes)), mask, idx)

    def evaluation_set(self, test: Dataset) -> None:
        return None

    def describe(self) -> dict:
        return {"name": self.name, "rows": self.rows}


@MEASURES.register("test-error")
class TestError:
    name, headline = "test-error", {"test_error": "test error %"}

    def measure(self, model, test, evaluation, batch_size, device, name):
        pred = predict(model, test.x, batch_size, device)
        error = float((pred != test.y).float().mean())
        return {"test_error": error, "clean_accuracy": 1 - error, "clean_error": error}, {"clean": pred}

    def describe(self, evaluation) -> dict:
        return {}


FAMILIES.register("toy")(StepFamily("toy", "test-error"))


# -- a toy learner: a linear layer on flattened inputs (7 lines)
class Flat(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


MODELS.register("toy-flat")(ModelSpec("toy-flat", "a linear layer (test)",
                                      lambda shape, c, opts: Flat(int(torch.tensor(shape).prod()), c)))

# -- a toy defense: drop the newest training rows, retrain the victim's learner (17 lines)
@dataclass
class DropNewest:
    name: str = "drop-newest"
    label: str | None = None
    rows: int = 10

    def validate(self, where: str = "defense") -> None: ...


def drop_newest(cfg: DropNewest, ctx) -> DefenseOutcome:
    removed = np.zeros(len(ctx.train), dtype=bool)
    removed[len(ctx.train) - cfg.rows:] = True
    model = ctx.retrain(ctx.train.subset(np.flatnonzero(~removed)), cfg.name)
    return DefenseOutcome(model, removed=removed, extra={"n_removed": int(removed.sum())})


DEFENSES.register("drop-newest")(DefenseSpec("drop-newest", "drop the newest rows (test)", DropNewest, drop_newest,
                                             kind="filter", needs=frozenset({"retrain"})))

BASE = {"device": "cpu", "data": {"name": "digits", "val_fraction": 0.1, "train_limit": 300},
        "model": {"name": "toy-flat"}, "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        "analysis": {"backdoor_neurons": False}}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


def test_toy_family_and_learner_run_and_grid(tmp_path, capsys):
    out = tmp_path / "runs"
    cfg = _write(tmp_path / "toy.yaml", {**BASE, "name": "toy", "attack": {"name": "toy-flip", "rows": 40},
                                          "defenses": [{"name": "drop-newest", "rows": 40}],
                                          "output": {"dir": str(out), "plots": False}})
    _cli(["run", str(cfg), "-q"])
    (run,) = [p for p in out.iterdir() if not p.name.startswith((".", "index"))]
    m = json.loads((run / "metrics.json").read_text())
    assert m["family"] == "toy" and m["attack"] == {"name": "toy-flip", "rows": 40, "n_poison": 40,
                                                    "train_size_poisoned": m["data"]["train"] + 40}
    assert 0 <= m["victim"]["test_error"] <= 1 and "attack_success_rate" not in m["victim"]
    dropped = m["defenses"]["drop-newest"]
    assert dropped["n_removed"] == 40 and dropped["detection"]["recall"] == 1.0  # exactly the 40 poison rows
    grid = {"name": "toy-grid", "kind": "toy", "base": BASE, "attacks": {"few": {"name": "toy-flip", "rows": 5},
                                                                       "many": {"name": "toy-flip", "rows": 80}},
            "defenses": [{"name": "drop-newest", "rows": 5}], "seeds": [0, 1], "output": {"dir": str(out)}}
    _cli(["matrix", _write(tmp_path / "grid.yaml", grid).as_posix(), "-q"])
    text = capsys.readouterr()
    assert "test error % (mean ± std)" in text.out and "drop-newest" in text.out and "cell 4/4 (many, seed 1): computed" in text.out + text.err
    _cli(["matrix", str(tmp_path / "grid.yaml"), "-q"])
    assert "cells: 0 computed, 4 reused" in capsys.readouterr().out


def test_a_toy_attack_in_the_wrong_family_is_one_line(tmp_path):
    from poisonlab.errors import PoisonlabError
    from poisonlab.families import load_any_config

    path = _write(tmp_path / "bad.yaml", {**BASE, "family": "backdoor", "attack": {"name": "toy-flip"}})
    try:
        load_any_config(path)
    except PoisonlabError as exc:
        assert str(exc) == "attack 'toy-flip' belongs to family 'toy', not 'backdoor'; remove family: or fix it"
    else:
        raise AssertionError("must fail")
