"""Defenses inside the subpopulation sweep (Jagielski et al. 2021, Sec. 6) on a tiny planted table."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_subpop_experiment import BASE, SPEC, SPLIT, planted_table

import poisonlab.subpop.experiment as sub_experiment
import poisonlab.subpop.steps as sub_steps
from poisonlab.errors import PoisonlabError
from poisonlab.subpop import feature_match, membership
from poisonlab.subpop.config import load_subpop_config
from poisonlab.subpop.defended import defense_summary, parse_defenses, trim_keep_count
from poisonlab.subpop.learners import fit_scratch, predictions
from poisonlab.subpop.sweep import SweepInputs, run_sweep


@pytest.mark.parametrize("item,message", [
    ("{name: trm}", "unknown defense 'trm' (did you mean 'trim'?)"),
    ("{label: x}", "defenses[0] needs a name"),
    ("{name: trim, epsilon: 0.1, keep_fractoin: 0.9}", "unknown key 'defenses[0].keep_fractoin' for trim (did you mean 'keep_fraction'?)"),
    ("{name: trim, epsilon: 1.5}", "defenses[0].epsilon must be a number in (0, 1), got 1.5"),
    ("{name: trim, epsilon: 0.1, keep_fraction: 0.9}", "give trim either epsilon or keep_fraction, not both"),
    ("{name: trim, max_iters: 0}", "defenses[0].max_iters must be an integer >= 1"),
    ("{name: sever, remove_fraction: 0}", "defenses[0].remove_fraction must be a number in (0, 1)"),
    ("{name: sever, rounds: 1.5}", "defenses[0].rounds must be an integer >= 1"),
    ("{name: spectral-signatures, removal_factor: -1}", "defenses[0].removal_factor must be a number > 0"),
    ("{name: activation-clustering, reduce: pcaa}", "defenses[0].reduce must be pca or ica (did you mean 'pca'?)"),
    ("{name: activation-clustering, rule: sise}", "defenses[0].rule must be size or silhouette"),
    ("{name: activation-clustering, size_threshold: 1}", "defenses[0].size_threshold must be a number in (0, 1)"),
    ("{name: spectral-signatures, rule: size}", "defenses[0].rule must be budget or validation"),
    ("{name: spectral-signatures, false_removal_rate: 1}", "defenses[0].false_removal_rate must be a number in [0, 1)"),
    ("{name: activation-clustering, validation_ratio: 0}", "defenses[0].validation_ratio must be a number in (0, 1]"),
    ("{name: spectral-signatures, rule: validation}", "decides on a clean validation split, but data.val_fraction is 0"),
    ("{name: trim, label: none}", "defenses[0].label must be a non-empty string other than 'none'"),
    ("trim, {name: trim}", "label 'trim' is used twice"),
    ("{name: trim}, 5", "defenses[1] must be a mapping like {name: trim}"),
])
def test_bad_defense_config_is_a_one_line_error(item, message):
    with pytest.raises(PoisonlabError) as err:
        load_subpop_config(None, [f"defenses=[{item}]"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_defense_defaults_are_filled():
    cfg = load_subpop_config(None, [("defenses=[trim, sever, spectral-signatures, {name: activation-clustering, "
                                     "label: ac}, {name: trim, label: t90, keep_fraction: 0.9}]")])
    assert cfg.defenses[0] == {"name": "trim", "label": "trim", "epsilon": 0.05, "keep_fraction": None, "max_iters": 5}
    assert cfg.defenses[1] == {"name": "sever", "label": "sever", "remove_fraction": 0.01, "rounds": 4}
    assert cfg.defenses[2]["epsilon"] == 0.05 and cfg.defenses[2]["removal_factor"] == 1.5
    assert cfg.defenses[2]["rule"] == "budget" and cfg.defenses[2]["false_removal_rate"] == 0.05
    # the registered defaults (Chen et al. 2018: FastICA to 10 dimensions, relative size 0.35)
    assert cfg.defenses[3] == {"name": "activation-clustering", "label": "ac", "dims": 10, "reduce": "ica",
                               "rule": "size", "size_threshold": 0.35, "silhouette_threshold": 0.10,
                               "validation_ratio": 0.5, "exclusionary": False, "exclusionary_threshold": 1.0,
                               "layer": "auto", "batch_size": 1024}
    assert cfg.defenses[4] == {"name": "trim", "label": "t90", "keep_fraction": 0.9, "max_iters": 5}
    specs = cfg.defense_specs()  # the filled list validates again
    assert trim_keep_count(specs[0].params, 1000) == 950 and trim_keep_count(specs[4].params, 15) == 14  # 13.5 -> 14
    assert load_subpop_config(None, []).defenses == []


# victim 900 rows, attacker 300: at alpha 2 the poisons of (blue, S) stay a minority of the cell's
# rows, yet they already damage it; a majority (the paper's regime) would be fitted and not trimmed
@pytest.fixture(scope="module")
def defended_inputs(one_thread) -> SweepInputs:
    victim, attacker, test = planted_table(900, 0), planted_table(300, 1), planted_table(600, 2)
    subs = feature_match(attacker.meta, test.meta, ["color", "size"], 10, None)[:3]  # blue and L, M, S
    a_members = [membership(s, attacker.meta) for s in subs]
    # epsilon: the largest planted poison share of the sweep ((blue, M): 84 poisons of 984 rows),
    # i.e. a little slack for (blue, S)'s 62 of 962 rows
    n_poison = max(int(np.floor(2.0 * m.sum() + 0.5)) for m in a_members)
    epsilon = n_poison / (len(victim) + n_poison)
    defenses = parse_defenses([{"name": "trim", "epsilon": epsilon}, {"name": "sever", "rounds": 2},
                               "spectral-signatures", "activation-clustering"])
    clean = fit_scratch(SPEC, victim, 0)
    return SweepInputs(SPEC, victim, attacker, test, None, predictions(clean, test.x), a_members,
                       [membership(s, test.meta) for s in subs], [1, 1, 1], [2.0], 0, defenses)


@pytest.fixture(scope="module")
def defended_serial(defended_inputs):
    return run_sweep(defended_inputs, workers=1)


def test_trim_removes_the_planted_poisons(defended_serial):
    blue_s = defended_serial[2]
    assert blue_s["target"] > 0                                   # the attack works undefended
    assert blue_s["trim:poisons_removed"] >= 0.9                  # TRIM finds (almost) every poison
    assert blue_s["trim:clean_removed"] <= 0.05
    assert blue_s["trim:target"] < blue_s["target"]               # and lowers the damage
    assert blue_s["trim:collateral"] <= blue_s["collateral"] + 0.01
    for r in defended_serial:
        for label in ("trim", "sever", "spectral-signatures", "activation-clustering"):
            assert 0 <= r[f"{label}:poisons_removed"] <= 1 and 0 <= r[f"{label}:clean_removed"] <= 1
            assert 0 <= r[f"{label}:clean_accuracy"] <= 1
        # SS removes round(1.5 * 0.05 * n_c) rows of each class
        assert r["spectral-signatures:clean_removed"] > 0


def test_parallel_equals_serial_with_defenses(defended_inputs, defended_serial):
    parallel = run_sweep(defended_inputs, workers=2)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in defended_serial]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in parallel]
    assert any(k.startswith("activation-clustering:") for k in strip[0])


def test_experiment_writes_the_defense_table(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(sub_steps, "load_data", lambda *a, **k: SPLIT)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "output.plots=false",
                                           ("subpopulations={features: [color, size], min_test: 10, "
                                            "max_test: null, limit: 6}"),
                                           ("defenses=[{name: trim, max_iters: 2}, {name: spectral-signatures, "
                                            "label: ss}]")])
    folder, m = sub_experiment.run_subpop_experiment(cfg)
    assert [(s["defense"], s["alpha"]) for s in m["defenses"]] == [
        (d, a) for d in ("none", "trim", "ss") for a in (1.0, 2.0)]
    table = list(csv.DictReader((folder.path / "tables" / "defenses.csv").open()))
    assert [(r["defense"], float(r["alpha"])) for r in table] == [(d, a) for d in ("none", "trim", "ss") for a in (1, 2)]
    assert all(float(r["clean accuracy"]) == s["clean_accuracy"] for r, s in zip(table, m["defenses"]))  # numbers
    assert "defenses" in (folder.path / "tables" / "defenses.md").read_text()
    for alpha in (1.0, 2.0):
        at = [r for r in m["rows"] if r["alpha"] == alpha]
        assert len(at) == 6
        worst = sorted(at, key=lambda r: (-r["target"], r["subpop_id"]))[:5]  # ranked WITHOUT defense
        got = {s["defense"]: s for s in m["defenses"] if s["alpha"] == alpha}
        assert got["none"]["worst_subpops"] == got["trim"]["worst_subpops"] == [r["subpop_id"] for r in worst]
        assert got["none"]["target_worst_k"] == pytest.approx(np.mean([r["target"] for r in worst]))
        for label in ("trim", "ss"):
            assert got[label]["target_worst_k"] == pytest.approx(np.mean([r[f"{label}:target"] for r in worst]))
            assert got[label]["collateral_all"] == pytest.approx(np.mean([r[f"{label}:collateral"] for r in at]))
            assert got[label]["poisons_removed"] == pytest.approx(np.mean([r[f"{label}:poisons_removed"] for r in at]))
            assert got[label]["clean_removed"] == pytest.approx(np.mean([r[f"{label}:clean_removed"] for r in at]))
        assert got["none"]["poisons_removed"] == 0 and got["none"]["clean_accuracy"] == pytest.approx(
            np.mean([r["clean_accuracy_after"] for r in at]))
    none_summary = {(s["alpha"], s["k"]): s["target_worst_k"] for s in m["summary"]}
    assert m["defenses"][1]["target_worst_k"] == pytest.approx(none_summary[(2.0, 5)])
    assert cfg.to_dict()["defenses"][1]["label"] == "ss"


def test_defense_summary_by_hand():
    rows = [{"subpop_id": s, "alpha": 1.0, "target": t, "collateral": 0.0, "clean_accuracy_after": 0.9,
             "d:target": dt, "d:collateral": 0.1, "d:clean_accuracy": 0.8, "d:poisons_removed": 1.0,
             "d:clean_removed": 0.0}
            for s, t, dt in [("a", 0.5, 0.0), ("b", 0.1, 0.9), ("c", float("nan"), 0.3)]]
    none, d = defense_summary(rows, ["d"], k=1)
    assert none["worst_subpops"] == d["worst_subpops"] == ["a"]
    assert (none["target_worst_k"], d["target_worst_k"]) == (0.5, 0.0)  # not b's 0.9: ranked undefended
    assert d["collateral_all"] == pytest.approx(0.1) and none["clean_removed"] == 0.0


def test_validation_rules_read_the_validation_split(defended_inputs):
    """Spectral Signatures / Activation Clustering with rule 'validation' inside a sweep task
    decide exactly as the library functions do on the undefended victim's representations of
    D ∪ D_p and of the clean validation rows."""
    from poisonlab.data.base import Dataset
    from poisonlab.defenses import DefenseInputs
    from poisonlab.defenses.activation_clustering import activation_clustering
    from poisonlab.defenses.filtering import representations
    from poisonlab.defenses.spectral import spectral_signatures

    s = defended_inputs
    val = planted_table(200, 3)
    rows = np.flatnonzero(s.attacker_members[2])[:20]  # 20 rows of a subpopulation with their labels flipped
    poisoned = Dataset(torch.cat([s.victim.x, s.attacker.x[rows]]), torch.cat([s.victim.y, 1 - s.attacker.y[rows]]),
                       s.victim.classes)
    model = fit_scratch(SPEC, poisoned, 0)
    reps, vreps = representations(model, poisoned.x, "auto"), representations(model, val.x, "auto")
    ss, ac = parse_defenses([{"name": "spectral-signatures", "rule": "validation"},
                             {"name": "activation-clustering", "reduce": "pca", "rule": "validation"}])
    mask = torch.arange(len(poisoned)) >= len(s.victim)
    ctx = DefenseInputs(poisoned, mask, lambda ds, name: fit_scratch(SPEC, ds, 0), None, val, model=model)
    got_ss = ss.run(ctx).removed
    want_ss = spectral_signatures(reps, poisoned.y.numpy(), rule="validation", val_reprs=vreps,
                                  val_labels=val.y.numpy(), false_removal_rate=0.05).remove
    assert np.array_equal(got_ss, want_ss)
    got_ac = ac.run(ctx).removed
    want_ac = activation_clustering(reps, poisoned.y.numpy(), 10, "pca", "validation", seed=0, val_reprs=vreps,
                                    val_labels=val.y.numpy()).remove
    assert np.array_equal(got_ac, want_ac)
    with pytest.raises(PoisonlabError, match="set data.val_fraction > 0"):
        ss.run(ctx.with_model(model, val=None))
