"""The matrix: a grid of attacks x defenses x seeds, reused cells, mean ± std, strict one-line errors."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from poisonlab import matrix as matrix_mod
from poisonlab.cli import app
from poisonlab.errors import PoisonlabError
from poisonlab.families import get_family
from poisonlab.matrix import grid_from_dict, load_grid, mean_std, run_matrix
from poisonlab.store import list_runs

ROOT = Path(__file__).resolve().parents[1]


def tiny_grid(out: Path, seeds: list[int] | None = None) -> dict:
    return {
        "name": "tiny-matrix",
        "base": {"device": "cpu", "data": {"name": "digits", "val_fraction": 0.1}, "model": {"name": "digits-cnn"},
                 "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.002},
                 "analysis": {"backdoor_neurons": False}},
        "attacks": {"pattern": {"name": "badnets", "p": 0.1, "target": 0, "trigger": {"kind": "pattern"}}},
        "defenses": [{"name": "fine-pruning", "step": 4, "fine_tune_epochs": 1}],
        "seeds": [0, 1] if seeds is None else seeds,
        "output": {"dir": str(out), "plots": False, "save_weights": False},
    }


@pytest.fixture(scope="module")
def first(tmp_path_factory, one_thread):
    """The tiny grid run once into a fresh store: (store, outcome)."""
    out = tmp_path_factory.mktemp("matrix-store")
    from poisonlab import progress

    progress.set_enabled(False)
    return out, run_matrix(grid_from_dict(tiny_grid(out)))


def _numbers(outcome, d):
    cells = sorted(outcome.metrics["cells"], key=lambda c: c["seed"])
    return [c["summary"][d] for c in cells]


def test_first_run_computes_every_cell_and_averages_by_hand(first):
    out, outcome = first
    assert len(outcome.computed) == 2 and outcome.reused == []
    runs = {r["id"]: r for r in list_runs(out)}
    for run_id in outcome.computed:  # the cells are ordinary runs holding the defense
        m = runs[run_id]["metrics"]
        assert "fine-pruning" in m["defenses"]
    by_hand = {}
    for run_id in outcome.computed:
        m = runs[run_id]["metrics"]
        by_hand[m["seed"]] = m
    rows = {r["defense"]: r for r in outcome.rows}
    assert list(rows) == ["none", "fine-pruning"]
    for d in ("none", "fine-pruning"):
        src = [by_hand[s]["victim"] if d == "none" else by_hand[s]["defenses"][d] for s in (0, 1)]
        acc = [m["clean_accuracy"] for m in src]
        asr = [m["attack_success_rate"] for m in src]
        mean = (acc[0] + acc[1]) / 2
        std = math.sqrt(((acc[0] - mean) ** 2 + (acc[1] - mean) ** 2) / (2 - 1))  # ddof=1
        assert rows[d]["clean_accuracy_mean"] == pytest.approx(mean)
        assert rows[d]["clean_accuracy_std"] == pytest.approx(std)
        assert rows[d]["attack_success_mean"] == pytest.approx(sum(asr) / 2)
        assert rows[d]["attack_success_std"] == pytest.approx(abs(asr[0] - asr[1]) / math.sqrt(2))
        assert rows[d]["n_seeds"] == 2
        total = [by_hand[s]["time"]["total_seconds"] for s in (0, 1)]
        assert rows[d]["total_seconds_mean"] == pytest.approx(sum(total) / 2)
        shown = next(t for t in outcome.table if t["defense"] == d)
        assert shown["clean acc. % (mean ± std)"] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    fp = [by_hand[s]["defenses"]["fine-pruning"]["defense_seconds"] for s in (0, 1)]
    assert rows["fine-pruning"]["defense_seconds_mean"] == pytest.approx(sum(fp) / 2)
    # the matrix's own run folder in the store
    assert (outcome.path / "tables" / "matrix.md").is_file() and (outcome.path / "tables" / "matrix.csv").is_file()
    saved = json.loads((outcome.path / "metrics.json").read_text())
    assert saved["computed"] == outcome.computed and saved["reused"] == []
    assert runs[outcome.run_id]["attack"] == "matrix"


def test_second_run_reuses_every_cell_and_never_trains(first, monkeypatch):
    out, outcome = first

    def boom(*a, **k):
        raise AssertionError("run_experiment must not be called for finished cells")

    monkeypatch.setattr(matrix_mod, "run_cell", boom)
    again = run_matrix(grid_from_dict(tiny_grid(out)))
    assert again.computed == [] and sorted(again.reused) == sorted(outcome.computed)
    assert again.rows == outcome.rows
    assert json.loads((again.path / "metrics.json").read_text())["reused"] == again.reused


def test_adding_a_seed_computes_one_new_cell(first):
    out, outcome = first
    more = run_matrix(grid_from_dict(tiny_grid(out, seeds=[0, 1, 2])))
    assert len(more.computed) == 1 and sorted(more.reused) == sorted(outcome.computed)
    assert all(r["n_seeds"] == 3 for r in more.rows)


def test_cell_of_other_data_or_code_is_not_reused(first, tmp_path):
    """The config hash leaves out data.dir: a run made from other data (or other code) must be
    recomputed, never served, so reuse also compares the recorded provenance."""
    import shutil

    from poisonlab.data import load_dataset
    from poisonlab.provenance import provenance

    out, outcome = first
    store = tmp_path / "store"
    shutil.copytree(out, store)
    recorded = [json.loads((store / run_id / "metrics.json").read_text()) for run_id in outcome.computed]
    assert all(m["provenance"] == provenance(load_dataset("digits")) for m in recorded)
    seed0, seed1 = sorted(outcome.computed, key=lambda r: json.loads((store / r / "metrics.json").read_text())["seed"])
    path = store / seed0 / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["provenance"]["data"] = "0" * 40  # as if computed on another data folder
    path.write_text(json.dumps(metrics))
    again = run_matrix(grid_from_dict(tiny_grid(store)))
    assert again.reused == [seed1] and len(again.computed) == 1 and again.computed[0] != seed0


def test_mean_std_single_seed_has_no_std():
    assert mean_std([0.5]) == (0.5, None)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert get_family("backdoor").display_rows([{"attack": "a", "defense": "none", "n_seeds": 1, "clean_accuracy_mean": 0.9,
                                     "clean_accuracy_std": None, "attack_success_mean": 1.0,
                                     "attack_success_std": None, "defense_seconds_mean": 0.0,
                                     "total_seconds_mean": 1.0}])[0]["clean acc. % (mean ± std)"] == "90.00 ± –"


def _broken(out: Path, edit) -> dict:
    raw = copy.deepcopy(tiny_grid(out))
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, expected", [
    (lambda g: g.update(atacks=g.pop("attacks")), "unknown grid key 'atacks' (did you mean 'attacks'?)"),
    (lambda g: g.update(seeds=[]), "'seeds' must be a non-empty list"),
    (lambda g: g.update(seeds=[0, 0]), "seeds lists 0 more than once"),
    (lambda g: g.update(attacks={}), "'attacks' must be a non-empty mapping"),
    (lambda g: g["defenses"].append({"name": "fine-prunning"}), "unknown defense 'fine-prunning' (did you mean 'fine-pruning'?)"),
    (lambda g: g["base"]["train"].update(epoch=2), "base: unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    (lambda g: g["base"]["train"].update(epochs=0), "base: "),
    (lambda g: g["base"].update(seed=3), "base must not hold 'seed'"),
    (lambda g: g["base"]["data"].update(val_fraction=0.0), "set data.val_fraction > 0"),
    (lambda g: g["attacks"]["pattern"].update(p="x"), "attacks.pattern: "),
])
def test_errors_are_one_line_and_come_before_any_training(tmp_path, monkeypatch, edit, expected):
    assert_fails_before_running(tmp_path, monkeypatch, "run_cell", lambda out: _broken(out, edit), expected)


def assert_fails_before_running(tmp_path: Path, monkeypatch, runner: str, make_grid, expected: str) -> None:
    """The grid ``make_grid(runs folder)`` fails to load or run with a one-line error holding
    ``expected``; ``matrix.<runner>`` is never called and no runs folder is written."""
    monkeypatch.setattr(matrix_mod, runner, lambda *a, **k: pytest.fail("nothing may run"))
    out = tmp_path / "runs"
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(make_grid(out)))
    with pytest.raises(PoisonlabError) as info:
        run_matrix(load_grid(path))
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_cli_error_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "runs"
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_broken(out, lambda g: g.update(seeds=[]))))
    with pytest.raises(SystemExit) as info:
        from poisonlab.cli import main

        main(["matrix", str(path)])
    assert info.value.code == 2 and not out.exists()
    result = CliRunner().invoke(app, ["matrix", "--help"])
    assert result.exit_code == 0 and "--data-dir" in result.output


def test_example_grid_is_valid():
    grid = load_grid(ROOT / "examples" / "matrix_digits.yaml", output_dir="/nonexistent-never-written")
    assert list(grid.attacks) == ["badnets-pattern", "badnets-single-pixel"]
    assert grid.defenses == ["fine-pruning", "spectral-signatures", "activation-clustering", "strip", "neural-cleanse"] and grid.seeds == [0, 1]
    assert len(grid.cells) == 4 and grid.cells[0].config.train.epochs == 10
    assert {c.config.output.dir for c in grid.cells} == {"/nonexistent-never-written"}
