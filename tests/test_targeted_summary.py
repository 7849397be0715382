"""examples/targeted_summary.py on a tiny targeted grid with defenses: the arm row and the
defense rows counted by hand from the cells' metrics."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from poisonlab.matrix import grid_from_dict, run_matrix

ROOT = Path(__file__).resolve().parents[1]


def _summary_module():
    spec = importlib.util.spec_from_file_location("targeted_summary", ROOT / "examples" / "targeted_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_counts_targets_saved_and_rows_removed(tmp_path, capsys, one_thread):
    grid = grid_from_dict({
        "name": "tiny-targeted", "kind": "targeted",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "digits-cnn"},
                 "train": {"epochs": 3, "lr": 0.1}},
        "attacks": {"gm": {"name": "gradient-matching", "poison_class": 3, "budget": 0.02, "steps": 5,
                           "targets": {"n": 3}}},
        "defenses": [{"name": "oracle-filter"}, {"name": "random-filter"}],
        "seeds": [0, 1], "output": {"dir": str(tmp_path), "plots": False},
    })
    run_matrix(grid)
    mod = _summary_module()
    assert mod.main([str(tmp_path), "--grid", "tiny-targeted", "--json", str(tmp_path / "s.json")]) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*-tiny-targeted-gm-*/metrics.json"))]
    assert len(runs) == 2 and out["arms"][0]["brews"] == 2 and out["arms"][0]["pairs"] == 6
    rows = {r["defense"]: r for r in out["defenses"]}
    assert set(rows) == {"oracle-filter", "random-filter"}
    for name, r in rows.items():
        before = sum(sum(m["victim"]["target_success"]) for m in runs)
        after = sum(sum(m["defenses"][name]["target_success"]) for m in runs)
        saved = sum(1 for m in runs for x, y in zip(m["victim"]["target_success"], m["defenses"][name]["target_success"])
                    if x and not y)
        assert (r["targets"], r["poisoned_before"], r["poisoned_after"], r["saved"]) == (6, before, after, saved)
    assert rows["oracle-filter"]["poisons_removed"] == 1.0 and rows["oracle-filter"]["clean_removed"] == 0.0
    assert 0 < rows["random-filter"]["clean_removed"] < 0.1  # as many random rows as poisons: about 2%
    printed = capsys.readouterr().out
    assert "| gm | oracle-filter | 6 |" in printed and "targets saved" in printed
