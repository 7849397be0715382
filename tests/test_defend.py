"""Defenses wired into an experiment: the attack x defense table, curves, and config errors."""
import csv

import pytest

from poisonlab.config import load_config
from poisonlab.errors import PoisonlabError
from poisonlab.experiment import run_experiment

BASE = ["train.epochs=3", "output.plots=true", "attack={name: badnets, p: 0.1, trigger: {kind: pattern, margin: 0}}"]


def test_defenses_table_and_curves(tmp_path):
    cfg = load_config(None, BASE + [f"output.dir={tmp_path}",
                                    "defenses=[{name: pruning, step: 4}, {name: fine-pruning, step: 4, fine_tune_epochs: 2}]"],
                      device="cpu")
    out = run_experiment(cfg)
    d = out.metrics["defenses"]
    assert set(d) == {"pruning", "fine-pruning"}
    for name, m in d.items():
        assert m["clean_accuracy_drop"] == pytest.approx(out.metrics["victim"]["clean_accuracy"] - m["clean_accuracy"])
        assert 0 <= m["fraction_pruned"] <= 1 and m["n_pruned"] % 4 == 0 or m["n_pruned"] == m["channels"]
        assert m["defense_seconds"] > 0 and m["peak_rss_mb"] > 0
        assert (out.path / "tables" / f"pruning_curve_{name}.csv").is_file()
        assert (out.path / "plots" / f"pruning_curve_{name}.png").is_file()
    # the pruning stop is the same for both (same model, same validation data, same rule)
    assert d["pruning"]["n_pruned"] == d["fine-pruning"]["n_pruned"]
    rows = list(csv.DictReader((out.path / "tables" / "defenses.csv").open()))
    assert [r["defense"] for r in rows] == ["none", "pruning", "fine-pruning"]
    assert float(rows[1]["channels pruned"]) == d["pruning"]["fraction_pruned"]
    assert float(rows[1]["accuracy drop"]) == pytest.approx(d["pruning"]["clean_accuracy_drop"])


@pytest.mark.parametrize("defenses,message", [
    ("[{name: prunning}]", "unknown defense 'prunning' (did you mean 'pruning'?)"),
    ("[{name: pruning, max_drop: 2}]", "max_drop"),
    ("[{name: pruning, stepp: 1}]", "unknown config key 'defense.stepp'"),
    ("[{name: pruning}, {name: pruning}]", "lists a defense twice"),
    ("[{step: 1}]", "defenses[0] needs a 'name'"),
])
def test_bad_defense_config_fails_before_training(tmp_path, defenses, message):
    cfg = load_config(None, BASE + [f"output.dir={tmp_path}", f"defenses={defenses}"], device="cpu")
    with pytest.raises(PoisonlabError) as err:
        run_experiment(cfg)
    assert message in str(err.value)
    assert not (tmp_path / ".cache").exists()  # nothing was trained


def test_defenses_need_attack_and_validation(tmp_path):
    cfg = load_config(None, ["train.epochs=1", f"output.dir={tmp_path}", "defenses=[{name: pruning}]"], device="cpu")
    with pytest.raises(PoisonlabError, match="defenses need an attack"):
        run_experiment(cfg)
    cfg = load_config(None, BASE + [f"output.dir={tmp_path}", "data.val_fraction=0", "defenses=[{name: pruning}]"],
                      device="cpu")
    with pytest.raises(PoisonlabError, match="clean validation split; set data.val_fraction > 0"):
        run_experiment(cfg)
    assert not (tmp_path / ".cache").exists()  # refused before any training


def test_one_defense_twice_with_labels():
    from poisonlab.defend import check_defenses

    out = check_defenses([{"name": "fine-pruning", "fine_tune_lr": 0.01},
                          {"name": "fine-pruning", "label": "fine-pruning-lr0.05", "fine_tune_lr": 0.05}])
    assert [(n, c.name, c.fine_tune_lr) for n, c in out] == [("fine-pruning", "fine-pruning", 0.01),
                                                              ("fine-pruning-lr0.05", "fine-pruning", 0.05)]
    with pytest.raises(PoisonlabError, match="give each variant its own label"):
        check_defenses([{"name": "pruning"}, {"name": "pruning"}])
    with pytest.raises(PoisonlabError, match="defense.label must be a non-empty string other than 'none' of 1-40 letters"):
        check_defenses([{"name": "pruning", "label": "has space"}])


def test_filtering_defenses_remove_rows_and_retrain(tmp_path):
    cfg = load_config(None, BASE + [f"output.dir={tmp_path}", "output.plots=false",
                                    ("defenses=[{name: spectral-signatures, epsilon: 0.1}, {name: activation-clustering, "
                                     "reduce: pca}]")], device="cpu")
    out = run_experiment(cfg)
    m = out.metrics
    ss = m["defenses"]["spectral-signatures"]
    assert ss["n_removed"] == ss["detection"]["n_removed"] and ss["n_removed"] > 0
    d = ss["detection"]
    assert d["true_positives"] + d["false_negatives"] == m["attack"]["n_poison"] == d["n_poison"]
    assert d["recall"] == d["true_positives"] / m["attack"]["n_poison"]
    assert d["n_rows"] == m["data"]["train"] + m["attack"]["n_poison"]
    # 1.5 * epsilon of every class is removed: 15% of the rows, up to rounding per class
    assert abs(ss["n_removed"] - 0.15 * d["n_rows"]) <= 10
    assert ss["target_class_clean_removed"] == d["clean_removed_share_per_class"][0]
    assert ss["defense_seconds"] > 0 and "activation-clustering" in m["defenses"]
    assert sum(c["removed"] for c in ss["per_class"].values()) == ss["n_removed"]  # per-class details recorded
    ac = m["defenses"]["activation-clustering"]
    assert sum(c["n"] for c in ac["per_class"].values()) == d["n_rows"]
    flagged = [c for c in ac["per_class"].values() if c["flagged"]]
    assert sum(c["sizes"][1] for c in flagged) == ac["n_removed"] and all(c["relative_size"] <= 0.35 for c in flagged)
    rows = list(csv.DictReader((out.path / "tables" / "defenses.csv").open()))
    assert float(rows[1]["poisons removed"]) == d["recall"] and rows[1]["channels pruned"] == ""
    assert f"| {100 * d['recall']:.2f}% |" in (out.path / "tables" / "defenses.md").read_text()
