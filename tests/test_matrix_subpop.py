"""Subpopulation attacks (Jagielski et al., CCS 2021) as matrix cells: a tiny planted-table grid,
averages checked by hand, reuse without recomputation, workers that change nothing, strict errors."""
from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_matrix import assert_fails_before_running, tiny_grid
from test_subpop_experiment import SPLIT

import poisonlab.data as data_pkg
import poisonlab.subpop.experiment as sub_experiment
import poisonlab.subpop.steps as sub_steps
from poisonlab.families import subpopulation as subpop_family
from poisonlab import matrix as matrix_mod
from poisonlab.errors import PoisonlabError
from poisonlab.matrix import grid_from_dict, load_grid, run_matrix
from poisonlab.store import list_runs, read_metrics
from poisonlab.subpop.config import SubpopConfig

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = ["trim", "sever"]


def tiny_subpop_grid(out: Path, **changes) -> dict:
    """Two attacks on the planted colour/size table (patched in for Adult): FeatureMatch at two
    alphas (6 subpopulations, so the worst 5 are a real choice) and ClusterMatch at one."""
    grid = {
        "name": "tiny-subpop",
        "kind": "subpop",
        "base": {"data": {"name": "adult"},
                 "model": {"name": "mlp", "options": {"hidden": []},
                           "train": {"epochs": 4, "batch_size": 128, "optimizer": "adam", "lr": 0.05,
                                     "schedule": "constant"}}},
        "attacks": {
            "fm": {"subpopulations": {"kind": "feature-match", "features": ["color", "size"], "min_test": 10,
                                      "max_test": None, "limit": 6},
                   "attack": {"alphas": [1.0, 2.0]}},
            "cm": {"subpopulations": {"kind": "cluster-match", "n_clusters": 3, "pca_dims": 3, "min_test": 5,
                                      "max_test": None},
                   "attack": {"alphas": [2.0], "label": 1}},
        },
        "defenses": [{"name": "trim", "max_iters": 1}, {"name": "sever", "rounds": 1, "remove_fraction": 0.05}],
        "seeds": [0, 1],
        "workers": 1,
        "output": {"dir": str(out), "plots": False, "save_weights": False},
    }
    grid.update(changes)
    return grid


@pytest.fixture(scope="module")
def planted():
    """Every subpop experiment of this module loads the tiny planted table instead of Adult."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sub_steps, "load_data", lambda *a, **k: SPLIT)
        mp.setattr(data_pkg, "load_data", lambda *a, **k: SPLIT)  # the provenance a finished cell is checked against
        yield


@pytest.fixture(scope="module")
def first(tmp_path_factory, one_thread, planted):
    """The tiny subpop grid run once into a fresh store: (store, grid, outcome)."""
    out = tmp_path_factory.mktemp("matrix-subpop-store")
    grid = grid_from_dict(tiny_subpop_grid(out))
    return out, grid, run_matrix(grid)


def _by_hand(metrics: dict, alpha: float, defense: str) -> dict[str, float | None]:
    """A cell's numbers from its per-subpopulation rows: rank by undefended target damage (ties by id), worst 5."""
    at = [r for r in metrics["rows"] if r["alpha"] == alpha]
    worst = sorted((r for r in at if not math.isnan(r["target"])), key=lambda r: (-r["target"], r["subpop_id"]))[:5]
    if defense == "none":
        col = {"target": "target", "collateral": "collateral", "clean_accuracy": "clean_accuracy_after"}
        removed = (None, None)
    else:
        col = {m: f"{defense}:{m}" for m in ("target", "collateral", "clean_accuracy")}
        removed = (np.mean([r[f"{defense}:poisons_removed"] for r in at]),
                   np.mean([r[f"{defense}:clean_removed"] for r in at]))
    return {"target_worst_k": np.mean([r[col["target"]] for r in worst]),
            "collateral_all": np.mean([r[col["collateral"]] for r in at]),
            "clean_accuracy": np.mean([r[col["clean_accuracy"]] for r in at]),
            "poisons_removed": removed[0], "clean_removed": removed[1]}


def test_cells_run_and_the_table_averages_them_by_hand(first):
    out, grid, outcome = first
    assert len(outcome.computed) == 4 and outcome.reused == []
    runs = {r["id"]: r for r in list_runs(out)}
    cell_metrics = {}
    for cell, rec in zip(grid.cells, outcome.metrics["cells"]):
        assert isinstance(cell.config, SubpopConfig) and cell.config.workers == 1
        assert runs[rec["run_id"]]["config_hash"] == cell.hash == rec["config_hash"]  # the hash the matrix predicts
        cell_metrics[(cell.attack, cell.seed)] = read_metrics(Path(runs[rec["run_id"]]["path"]))
    expected = [(a, alpha, d) for a, alphas in (("fm", [1.0, 2.0]), ("cm", [2.0]))
                for alpha in alphas for d in ["none", *DEFENSES]]
    assert [(r["attack"], r["alpha"], r["defense"]) for r in outcome.rows] == expected
    assert cell_metrics[("fm", 0)]["subpopulations"]["count"] == 6  # worst 5 of 6: a real ranking
    for row in outcome.rows:
        hand = [_by_hand(cell_metrics[(row["attack"], s)], row["alpha"], row["defense"]) for s in (0, 1)]
        for m in subpop_family.MEASURES:
            values = [h[m] for h in hand]
            if values[0] is None:
                assert row[f"{m}_mean"] is None and row[f"{m}_std"] is None
                continue
            assert row[f"{m}_mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)  # ddof=1
        seconds = [cell_metrics[(row["attack"], s)]["time"]["total_seconds"] for s in (0, 1)]
        assert row["total_seconds_mean"] == pytest.approx(sum(seconds) / 2) and row["n_seeds"] == 2
    shown = outcome.table[3]  # fm: none, trim, sever at alpha 1, then none at alpha 2
    assert (shown["attack"], shown["alpha"], shown["defense"]) == ("fm", "2", "none")
    r = outcome.rows[3]
    target = f"{r['target_worst_k_mean']:.3f} ± {r['target_worst_k_std']:.3f}"
    assert shown["target damage, worst 5"] == target
    assert shown["poisons removed %"] == "–"
    trim = outcome.table[4]
    assert trim["clean rows removed %"] == (f"{100 * outcome.rows[4]['clean_removed_mean']:.2f} ± "
                                        f"{100 * outcome.rows[4]['clean_removed_std']:.2f}")
    # the matrix's own run folder and index row, as for BadNets grids
    md = (outcome.path / "tables" / "matrix.md").read_text()
    assert "target damage, worst 5" in md and subpop_family.NOTE in md and matrix_mod.STD_NOTE in md
    assert (outcome.path / "tables" / "matrix.csv").is_file()
    saved = json.loads((outcome.path / "metrics.json").read_text())
    assert saved["grid_kind"] == "subpopulation" and saved["computed"] == outcome.computed and saved["workers"] == 1
    assert runs[outcome.run_id]["attack"] == "matrix"


def test_second_run_reuses_every_cell_whatever_the_workers(first, monkeypatch):
    out, _, outcome = first

    def boom(*a, **k):
        raise AssertionError("no experiment may run for finished cells")

    monkeypatch.setattr(sub_experiment, "run_subpop_experiment", boom)
    monkeypatch.setattr(matrix_mod, "run_cell", boom)
    again = run_matrix(grid_from_dict(tiny_subpop_grid(out), workers=2))  # --workers is not part of a cell's hash
    assert again.computed == [] and again.reused == outcome.computed
    assert again.rows == outcome.rows


def test_workers_do_not_change_numbers_and_undefended_cells_work(first, planted, tmp_path, monkeypatch):
    """A grid without defenses, computed on 2 workers: its numbers are the undefended numbers of the
    defended grid's cell (defenses run after the undefended fit, sweeps are seeded by task), and a rerun reuses it."""
    _, _, outcome = first
    raw = tiny_subpop_grid(tmp_path, seeds=[0], defenses=[], workers=2)
    del raw["attacks"]["cm"]
    plain = run_matrix(grid_from_dict(raw))
    assert len(plain.computed) == 1 and plain.metrics["cells"][0]["workers"] == 2
    want = [s for s in next(c for c in outcome.metrics["cells"] if c["attack"] == "fm" and c["seed"] == 0)["summary"]
            if s["defense"] == "none"]
    assert plain.metrics["cells"][0]["summary"] == want
    monkeypatch.setattr(matrix_mod, "run_cell", lambda *a, **k: pytest.fail("must be reused"))
    assert run_matrix(grid_from_dict(raw)).reused == plain.computed


@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_predicted_hash_is_the_recorded_one(planted, tmp_path, monkeypatch, val_fraction):
    """The matrix predicts each cell's config hash before running it; a drift from the hash that
    run_subpop_experiment records would make every cell recompute forever."""
    raw = tiny_subpop_grid(tmp_path, seeds=[3], defenses=[], workers=1)
    raw["base"]["data"]["val_fraction"] = val_fraction
    raw["attacks"] = {"fm": {"subpopulations": {"features": ["color", "size"], "min_test": 10, "max_test": None,
                                                "limit": 2}, "attack": {"alphas": [1.0]}}}
    grid = grid_from_dict(raw)
    done = run_matrix(grid)
    assert [r["config_hash"] for r in list_runs(tmp_path) if r["id"] in done.computed] == [grid.cells[0].hash]
    monkeypatch.setattr(matrix_mod, "run_cell", lambda *a, **k: pytest.fail("must be reused"))
    assert run_matrix(grid_from_dict(raw)).reused == done.computed


def _broken(out: Path, edit) -> dict:
    raw = copy.deepcopy(tiny_subpop_grid(out))
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, expected", [
    (lambda g: g.update(kind="subpopp"), "unknown grid kind 'subpopp' (did you mean 'subpop'?)"),
    (lambda g: g.update(kind="badnet"), "unknown grid kind 'badnet' (did you mean 'badnets'?)"),
    (lambda g: g["attacks"]["fm"].update(subpopulation={}),
     "unknown key 'attacks.fm.subpopulation' (did you mean 'subpopulations'?)"),
    (lambda g: g["attacks"]["fm"].update(atack={}), "unknown key 'attacks.fm.atack' (did you mean 'attack'?)"),
    (lambda g: g["attacks"]["fm"].update(model={}), "attacks.fm must not set 'model'"),
    (lambda g: g["attacks"]["fm"].update(seed=3), "attacks.fm must not set 'seed'"),
    (lambda g: g["attacks"]["fm"]["subpopulations"].update(kinds="x"),
     "attacks.fm: unknown config key 'subpopulations.kinds' (did you mean 'kind'?)"),
    (lambda g: g["attacks"]["cm"]["subpopulations"].update(kind="cluster"),
     "attacks.cm: config key 'subpopulations.kind' must be one of feature-match, cluster-match, got 'cluster' "
     "(did you mean 'cluster-match'?)"),
    (lambda g: g["attacks"]["fm"]["attack"].update(alphas=[0]), "attacks.fm: attack.alphas must be a non-empty list"),
    (lambda g: g["attacks"]["fm"]["attack"].update(lable=1),
     "attacks.fm: unknown config key 'attack.lable' (did you mean 'label'?)"),
    (lambda g: g["attacks"].update(x=5), "attacks.x must be an attack section mapping"),
    (lambda g: g["defenses"].append({"name": "trm"}), "unknown defense 'trm' (did you mean 'trim'?)"),
    (lambda g: g["defenses"].append({"name": "sever", "label": "sv", "round": 2}),
     "unknown key 'defenses[2].round' for sever (did you mean 'rounds'?)"),
    (lambda g: g["defenses"].append("none"), "the defense label 'none' is reserved"),
    (lambda g: g["defenses"].append({"name": "trim"}), "label 'trim' is used twice"),
    (lambda g: g["base"].update(subpopulations={}), "base must not hold 'subpopulations'"),
    (lambda g: g["base"].update(workers=2), "base must not hold 'workers'"),
    (lambda g: g["base"]["model"].update(optoins={}),
     "base: unknown config key 'model.optoins' (did you mean 'options'?)"),
    (lambda g: g["base"]["data"].update(name="adutl"), "base: unknown data set 'adutl' (did you mean 'adult'?)"),
    (lambda g: g.update(workers=0), "workers must be an integer >= 1"),
    (lambda g: g.update(seeds=[1, 1]), "seeds lists 1 more than once"),
])
def test_errors_are_one_line_and_come_before_any_training(tmp_path, monkeypatch, edit, expected):
    assert_fails_before_running(tmp_path, monkeypatch, "run_cell", lambda out: _broken(out, edit),
                                expected)


def test_badnets_grids_are_unaffected(tmp_path):
    plain = grid_from_dict(tiny_grid(tmp_path))
    explicit = grid_from_dict({**tiny_grid(tmp_path), "kind": "badnets"})
    assert plain.kind == explicit.kind == "backdoor" and plain.workers is None
    assert [c.hash for c in plain.cells] == [c.hash for c in explicit.cells]
    assert [c.config for c in plain.cells] == [c.config for c in explicit.cells]
    for grid in ({**tiny_grid(tmp_path), "workers": 2}, tiny_grid(tmp_path)):
        with pytest.raises(PoisonlabError, match="remove it from this backdoor grid") as info:
            grid_from_dict(grid, workers=None if "workers" in grid else 2)
        assert "\n" not in str(info.value)
    with pytest.raises(PoisonlabError, match="base must not hold 'attack'"):
        grid_from_dict({**tiny_grid(tmp_path), "base": {"attack": {}}})


def test_cli_prints_the_subpop_table_from_reused_cells(first, tmp_path, capsys, monkeypatch):
    from poisonlab.cli import main

    out, _, _ = first
    monkeypatch.setattr(matrix_mod, "run_cell", lambda *a, **k: pytest.fail("must be reused"))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_subpop_grid(out)))
    with pytest.raises(SystemExit) as info:
        main(["matrix", str(path), "--workers", "2", "-q"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "cells: 0 computed, 4 reused" in text and "target damage, worst 5" in text
    assert "worst without defense" in text


def test_the_adult_example_grid_is_valid():
    grid = load_grid(ROOT / "examples" / "matrix_adult_subpop.yaml", data_dir="/data",
                     output_dir="/nonexistent-never-written")
    assert grid.kind == "subpopulation" and grid.seeds == [0, 1]
    assert {"trim", "sever"} <= set(grid.defenses)
    kinds = {c.config.subpopulations.kind for c in grid.cells}
    assert kinds == {"feature-match", "cluster-match"} and len(grid.cells) == 2 * len(grid.attacks)
    for c in grid.cells:
        assert c.config.data.name == "adult" and c.config.data.dir == "/data"
        assert c.config.output.dir == "/nonexistent-never-written"
