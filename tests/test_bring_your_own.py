"""Bring your own model, learner and data (issue 11), from YAML, on tiny fixtures written here:
a user's torch network by import path and by file (``--trust-code``), a scikit-learn random
forest under BadNets and under a subpopulation attack, an image folder of PNGs, a CSV with
categorical columns and an ``.npz``; and the one-line error of each bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from poisonlab.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_fixtures import class_tree, write_image  # noqa: E402
from hostile import assert_one_line_error, run_cli  # noqa: E402

NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, input_shape, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''
BADNETS = {"name": "badnets", "p": 0.1, "target": 0, "trigger": {"kind": "pattern", "margin": 0}}
TRAIN = {"epochs": 15, "batch_size": 64, "optimizer": "adam", "lr": 0.01, "schedule": "constant"}


def _run(tmp_path: Path, doc: dict, *flags: str) -> dict:
    """``poisonlab run`` in this process on ``doc``; the run's metrics."""
    out = tmp_path / "runs"
    doc = {**({} if doc.get("family") else {"device": "cpu"}), **doc, "output": {"dir": str(out), "plots": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        main(["run", str(path), "-q", *flags])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    runs = sorted((p for p in out.iterdir() if (p / "metrics.json").is_file()), key=lambda p: p.stat().st_mtime)
    return json.loads((runs[-1] / "metrics.json").read_text())


def _digits(model: dict, **data) -> dict:
    return {"name": "byo", "data": {"name": "digits", "val_fraction": 0.1, "train_limit": 600, **data},
            "model": model, "train": TRAIN, "attack": BADNETS}


def test_users_torch_net_by_import_path_is_backdoored(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = _run(tmp_path, _digits({"name": "usernets:TinyNet", "options": {"hidden": 32}}))
    assert m["attack"]["n_poison"] == 54  # p = 0.1 of the 540 training rows (600 less the validation tenth)
    assert m["victim"]["attack_success_rate"] > 0.8 > m["baseline"]["attack_success_rate"]


def test_a_net_from_a_file_needs_trust_code(tmp_path):
    net = tmp_path / "mynet.py"
    net.write_text(NET)
    doc = _digits({"name": f"{net}:TinyNet"})
    path = tmp_path / "file.yaml"
    path.write_text(yaml.safe_dump({**doc, "output": {"dir": str(tmp_path / "r")}}))
    assert_one_line_error(run_cli(["run", str(path)]), "pass --trust-code")
    assert not (tmp_path / "r").exists()
    m = _run(tmp_path, doc, "--trust-code")
    assert m["victim"]["attack_success_rate"] > 0.8


def test_random_forest_under_badnets(tmp_path):
    m = _run(tmp_path, _digits({"name": "random-forest", "options": {"n_estimators": 30}}))
    assert m["victim"]["attack_success_rate"] > 0.8 > m["baseline"]["attack_success_rate"]
    assert m["baseline"]["from_cache"] is False and m["baseline"]["clean_accuracy"] > 0.8


def _table(path: Path, rows: int = 400, seed: int = 0) -> Path:
    """A CSV: a numeric column, two categorical ones; the label follows colour and size."""
    rng = np.random.default_rng(seed)
    lines = ["age,colour,shape,size,label"]
    for _ in range(rows):
        colour, shape, size = rng.choice(["red", "blue", "green"]), rng.choice(["disc", "star"]), rng.normal()
        label = "yes" if (colour == "red") ^ (size > 0.8) else "no"
        lines.append(f"{rng.integers(18, 90)},{colour},{shape},{size:.3f},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_random_forest_under_a_subpopulation_attack_on_a_csv(tmp_path):
    csv = _table(tmp_path / "people.csv")
    doc = {"family": "subpopulation", "name": "csv-subpop", "workers": 1,
           "data": {"name": "csv", "path": str(csv), "options": {"label": "label"}},
           "model": {"name": "random-forest", "options": {"n_estimators": 20}},
           "subpopulations": {"kind": "feature-match", "features": ["colour", "shape"], "min_test": 5,
                              "max_test": 100},
           "attack": {"alphas": [2.0], "label": 0}}
    m = _run(tmp_path, doc)
    assert m["family"] == "subpopulation" and m["model"]["name"] == "random-forest"
    assert m["subpopulations"]["count"] >= 3 and m["data"]["features"] == 7  # age, size + 3 colours + 2 shapes
    assert max(r["target"] for r in m["rows"]) > 0.2  # flipped copies of a subpopulation damage it


def test_image_folder_and_npz_as_data(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pngs"
    for c in ("cat", "dog"):
        for k in range(30):
            write_image(root / c / f"{k:02d}.png", rng.integers(0, 256, (8, 8)) // (1 if c == "cat" else 2))
    m = _run(tmp_path, {"name": "pngs", "data": {"name": "image-folder", "path": str(root),
                                                "options": {"image_size": 8, "channels": 1}, "val_fraction": 0.1},
                        "model": {"name": "mlp", "options": {"hidden": [16]}}, "train": TRAIN,
                        "attack": {**BADNETS, "trigger": {"kind": "single-pixel", "margin": 0}}})
    assert m["data"]["shape"] == [1, 8, 8] and m["data"]["classes"] == 2
    assert m["data"]["train"] + m["data"]["validation"] + m["data"]["test"] == 60
    x = rng.random((120, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, 0, :3].sum(1) > 1.5).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    m = _run(tmp_path, {"name": "npz", "data": {"name": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.1},
                        "model": {"name": "mlp"}, "train": TRAIN, "attack": BADNETS})
    assert m["data"]["shape"] == [1, 6, 6] and m["data"]["test"] == 24 and m["attack"]["n_poison"] > 0


@pytest.mark.parametrize("model, needle", [
    ("nosuchpkg.nets:Net", "nosuchpkg"),
    ("json:NoSuchName", "NoSuchName"),
    ("os:system", "is not a class deriving from torch.nn.Module or sklearn.base.BaseEstimator"),
    ("subprocess:Popen", "is not a class deriving from torch.nn.Module or sklearn.base.BaseEstimator"),
])
def test_bad_model_names_are_one_line(tmp_path, model, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**_digits({"name": model}), "output": {"dir": str(tmp_path / "r")}}))
    assert_one_line_error(run_cli(["run", str(path)]), needle)
    assert not (tmp_path / "r").exists()


def test_bad_data_is_one_line(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,x\n3,4\n")
    nolabel = _table(tmp_path / "t.csv")
    corrupt = class_tree(tmp_path / "bad", {"x": 1, "y": 1})
    (corrupt / "x" / "00.png").write_bytes(b"\x89PNG not an image")
    cases = [({"name": "image-folder", "path": str(flat)}, "class"),
             ({"name": "image-folder", "path": str(corrupt)}, "00.png"),
             ({"name": "csv", "path": str(ragged), "options": {"label": "label"}}, "line 3"),
             ({"name": "csv", "path": str(nolabel), "options": {"label": "income"}}, "income")]
    for data, needle in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"data": data, "model": {"name": "mlp"}, "attack": BADNETS,
                                        "output": {"dir": str(tmp_path / "r")}}))
        assert_one_line_error(run_cli(["run", str(path)]), needle)


def test_a_defense_whose_needs_are_not_met_is_one_line_before_training(tmp_path):
    csv = _table(tmp_path / "people.csv")
    path = tmp_path / "strip.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "csv", "path": str(csv), "options": {"label": "label"}},
                                    "model": {"name": "random-forest"}, "train": TRAIN,
                                    "attack": {**BADNETS, "trigger": {"kind": "single-pixel"}},
                                    "defenses": [{"name": "strip"}], "output": {"dir": str(tmp_path / "r")}}))
    line = assert_one_line_error(run_cli(["run", str(path)]), "defense 'strip' needs image inputs",
                                 "tabular (shape (7,))")
    assert "fine-pruning" not in line
    path.write_text(path.read_text().replace("name: strip", "name: fine-pruning"))
    assert_one_line_error(run_cli(["run", str(path)]), "fine-pruning", "torch")
