"""Caches and reuse cannot serve a wrong answer (issue 11, item 7): the clean-reference cache
and a grid's finished cells key on the data actually loaded, the model's architecture and the
code; changing one training row, or one layer of a user's network, is a miss."""
from __future__ import annotations

import sys

import numpy as np

from poisonlab.config import load_config
from poisonlab.data import from_arrays, register_dataset, unregister_dataset
from poisonlab.experiment import run_experiment
from poisonlab.matrix import grid_from_dict, run_matrix

OVER = ["data.name=fp-rows", "data.val_fraction=0.1", "model.name=mlp", "model.options={hidden: [8]}",
        "train.epochs=1", "output.plots=false", "analysis.backdoor_neurons=false",
        "attack={name: badnets, p: 0.1, trigger: {kind: single-pixel, margin: 0}}"]


def _split(changed: bool = False):
    rng = np.random.default_rng(0)
    x = rng.random((80, 1, 4, 4)).astype(np.float32)
    y = np.arange(80) % 2
    if changed:
        x[3, 0, 1, 1] += 0.25  # one pixel of one training row
    return from_arrays(x, y, x_test=x[:20], y_test=y[:20])


def test_one_changed_training_row_misses_the_cache_and_the_grid(tmp_path):
    try:
        register_dataset("fp-rows", _split())
        first = run_experiment(load_config(None, OVER + [f"output.dir={tmp_path}"], device="cpu"))
        again = run_experiment(load_config(None, OVER + [f"output.dir={tmp_path}"], device="cpu"))
        assert first.metrics["baseline"]["from_cache"] is False and again.metrics["baseline"]["from_cache"] is True
        grid = {"name": "fp", "base": {"device": "cpu", **SECTIONS}, "seeds": [0],
                "attacks": {"px": {"name": "badnets", "p": 0.1, "trigger": {"kind": "single-pixel", "margin": 0}}},
                "output": {"dir": str(tmp_path)}}
        assert run_matrix(grid_from_dict(grid)).computed and run_matrix(grid_from_dict(grid)).reused
        register_dataset("fp-rows", _split(changed=True))
        changed = run_experiment(load_config(None, OVER + [f"output.dir={tmp_path}"], device="cpu"))
        assert changed.metrics["baseline"]["from_cache"] is False  # same config hash, other rows: a miss
        assert changed.metrics["config_hash"] == first.metrics["config_hash"]
        assert changed.metrics["provenance"]["data"] != first.metrics["provenance"]["data"]
        outcome = run_matrix(grid_from_dict(grid))
        assert outcome.reused == [] and len(outcome.computed) == 1
    finally:
        unregister_dataset("fp-rows")


SECTIONS = {"data": {"name": "fp-rows", "val_fraction": 0.1}, "model": {"name": "mlp", "options": {"hidden": [8]}},
            "train": {"epochs": 1}, "analysis": {"backdoor_neurons": False}}


NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_features):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_features, {width}), nn.ReLU(), nn.Linear({width}, num_classes))

    def forward(self, x):
        return self.fc(x)
'''


def test_a_changed_user_network_misses_the_cache(tmp_path, monkeypatch):
    pkg = tmp_path / "src"
    pkg.mkdir()
    monkeypatch.syspath_prepend(str(pkg))
    over = [o for o in OVER if not o.startswith("model.")] + ["model.name=fpnet:Net", f"output.dir={tmp_path}"]
    try:
        register_dataset("fp-rows", _split())
        cached = []
        for width in (4, 4, 6):
            (pkg / "fpnet.py").write_text(NET.replace("{width}", str(width)))
            sys.modules.pop("fpnet", None)
            out = run_experiment(load_config(None, over, device="cpu"))
            cached.append(out.metrics["baseline"]["from_cache"])
        assert cached == [False, True, False]  # the same file is served, a wider layer is not
    finally:
        unregister_dataset("fp-rows")
