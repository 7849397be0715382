"""The certified (Rosenfeld et al. 2020) and fine-pruning (Liu et al. 2018) defenses inside the
subpopulation sweep (Jagielski et al. 2021, Sec. 6), and the clean validation split they rely on."""
from __future__ import annotations

import csv
import doctest
import itertools
import math

import numpy as np
import pytest
import torch
from test_subpop_experiment import BASE, SPEC, SPLIT, planted_table

import poisonlab.subpop.experiment as sub_experiment
import poisonlab.subpop.steps as sub_steps
from poisonlab.data.base import Dataset, DataSplit
from poisonlab.defenses import DefenseInputs, certified, pruning
from poisonlab.defenses.certified import (
    SmoothedRidge,
    certified_accuracy_curve,
    certified_flips,
    certified_radius,
    certify,
    ridge_alpha,
    smoothed_prediction,
)
from poisonlab.defenses.robust_defenses import fit_smoothed_ridge
from poisonlab.errors import PoisonlabError
from poisonlab.models import activations
from poisonlab.subpop import feature_match, membership
from poisonlab.subpop.config import load_subpop_config
from poisonlab.subpop.defended import parse_defenses
from poisonlab.subpop.learners import fit_scratch, predictions
from poisonlab.subpop.poisons import label_flip_poisons
from poisonlab.subpop.sweep import SweepInputs, run_sweep
from poisonlab.subpop.threat import attacker_split, validation_split

CERTIFIED = {"name": "certified", "q": 0.2, "lam": 0.5, "curve_rows": 40}
FINE_PRUNING = {"name": "fine-pruning", "max_drop": 0.05, "fine_tune_epochs": 2, "fine_tune_lr": 0.01}


@pytest.mark.parametrize("module", [certified, pruning])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------------- validation split
def test_validation_split_is_disjoint_seeded_and_stratified():
    y = np.array([0] * 80 + [1] * 20)
    train, val = validation_split(100, 0.1, 3, y)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(100))
    assert (y[val] == 1).sum() == 2  # stratified: a tenth of each class
    again = validation_split(100, 0.1, 3, y)
    assert np.array_equal(again[1], val) and not np.array_equal(validation_split(100, 0.1, 4, y)[1], val)
    assert len(validation_split(100, 0.0, 3)[1]) == 0
    with pytest.raises(PoisonlabError, match="leaves the validation split empty"):
        validation_split(3, 0.1, 0)
    # its own stream: not the attacker split's draw on the same rows
    assert not np.array_equal(attacker_split(100, 0.1, 3, y)[1], val)


# ------------------------------------------------------------------------- certified library
def _tiny(seed: int, n: int = 14, m: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return X, y, rng.normal(size=(m, 3))


def test_smoothed_ridge_equals_the_library_functions_on_a_tiny_case():
    X, y, Xt = _tiny(0)
    ones = lambda a: np.hstack([a, np.ones((len(a), 1))])  # the intercept column
    for q, lam in ((0.1, 1.0), (0.3, 0.2)):
        model = SmoothedRidge(q, lam).fit(X, y)
        alpha = ridge_alpha(ones(X), ones(Xt), lam)
        np.testing.assert_allclose(np.vstack(list(model.alphas(Xt))), alpha, atol=1e-12)
        direct = [smoothed_prediction(a, y, q)[1] for a in alpha]
        assert model.predict(Xt).tolist() == direct
        np.testing.assert_allclose(model.expected_scores(Xt), [q * a.sum() + (1 - 2 * q) * a @ y for a in alpha],
                                   atol=1e-12)
        for r in (0, 1, 3):
            labels, ok = model.certify(Xt, r)
            assert labels.tolist() == direct
            assert ok.tolist() == [certified_flips(a, y, q, max_r=r) >= r for a in alpha]
            assert [certify(a, y, q, r) for a in alpha] == list(zip(direct, ok.tolist()))
        labels, radii = model.radii(Xt)
        assert radii.tolist() == [certified_flips(a, y, q) for a in alpha]
        assert [certified_radius(a, y, q) for a in alpha] == list(zip(direct, radii.tolist()))


def test_early_refusal_changes_no_answer(monkeypatch):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4))
    y = (X @ [1.0, -0.5, 0.2, 0.0] + 0.8 * rng.normal(size=300) > 0).astype(np.int64)
    Xt = rng.normal(size=(25, 4))
    model = SmoothedRidge(0.15, 1.0).fit(X, y)
    fast = model.radii(Xt, 40), model.certify(Xt, 7)
    monkeypatch.setattr(certified, "_GIVE_UP_MARGIN", math.inf)  # the full golden-section search
    slow = model.radii(Xt, 40), model.certify(Xt, 7)
    assert all(np.array_equal(a, b) for f, s in zip(fast, slow) for a, b in zip(f, s))
    assert 0 < (fast[0][1] >= 0).sum() < 25 and len(set(fast[0][1].tolist())) > 3  # a mix of radii
    # the convex floor never exceeds a convex function's minimum over the points' span
    for c in rng.uniform(-1, 5, size=30):
        ps = np.sort(rng.uniform(0, 4, size=4))
        lowest = 0.0 if ps[0] <= c <= ps[-1] else min((ps[0] - c) ** 2, (ps[-1] - c) ** 2)
        assert certified._convex_floor(ps, (ps - c) ** 2) <= lowest + 1e-12


def test_smoothed_ridge_errors():
    X, y, _ = _tiny(1)
    with pytest.raises(PoisonlabError, match="not fitted"):
        SmoothedRidge(0.1, 1.0).predict(X)
    with pytest.raises(PoisonlabError, match="has 3 columns but the model was fitted on 4"):
        SmoothedRidge(0.1, 1.0).fit(X, y).predict(X[:, :2])
    with pytest.raises(PoisonlabError, match="binary labels"):
        SmoothedRidge(0.1, 1.0).fit(X, y + 1)
    with pytest.raises(PoisonlabError, match=r"q \(label-flip probability"):
        SmoothedRidge(0.5, 1.0)
    with pytest.raises(PoisonlabError, match="r .number of flipped labels. must be an integer >= 0"):
        SmoothedRidge(0.1, 1.0).fit(X, y).certify(X, -1)


# ------------------------------------------------------------------------- the subpop defenses
@pytest.fixture(scope="module")
def inputs(one_thread) -> SweepInputs:
    victim, attacker, test = planted_table(500, 0), planted_table(300, 1), planted_table(400, 2)
    val = planted_table(200, 5)
    subs = feature_match(attacker.meta, test.meta, ["color", "size"], 10, None)[:3]  # blue and L, M, S
    clean = fit_scratch(SPEC, victim, 0)
    return SweepInputs(SPEC, victim, attacker, test, None, predictions(clean, test.x),
                       [membership(s, attacker.meta) for s in subs], [membership(s, test.meta) for s in subs],
                       [1, 1, 1], [2.0], 0, parse_defenses([CERTIFIED, FINE_PRUNING]), val)


@pytest.fixture(scope="module")
def serial(inputs):
    return run_sweep(inputs, workers=1)


def test_certified_task_numbers_equal_a_direct_computation(inputs, serial):
    d = inputs.defenses[0]
    ones = lambda a: np.hstack([a.double().numpy(), np.ones((len(a), 1))])
    y = inputs.test.y.numpy()
    clean_direct = np.array([smoothed_prediction(a, inputs.victim.y.numpy(), 0.2)[1]
                             for a in ridge_alpha(ones(inputs.victim.x), ones(inputs.test.x), 0.5)])
    for i, r in enumerate(serial):
        rows = np.flatnonzero(inputs.attacker_members[i])
        x_p, y_p, _ = label_flip_poisons(inputs.attacker.x[rows], 2.0, 1, np.random.default_rng([0, i, 0, 0x5B]), 2)
        X, labels = torch.cat([inputs.victim.x, x_p]), torch.cat([inputs.victim.y, y_p]).numpy()
        member = inputs.test_members[i]
        alpha = ridge_alpha(ones(X), ones(inputs.test.x[torch.from_numpy(member)]), 0.5)
        pred = [smoothed_prediction(a, labels, 0.2)[1] for a in alpha]
        radius = [certified_flips(a, labels, 0.2, max_r=len(y_p)) for a in alpha]
        expected = np.mean([(p == t) and rad >= len(y_p) for p, t, rad in zip(pred, y[member], radius)])
        assert r["certified:certified_accuracy"] == pytest.approx(expected)
        full = fit_smoothed_ridge(d.cfg, Dataset(X, torch.from_numpy(labels), ["no", "yes"])).predict(
            inputs.test.x.numpy())
        assert full[member].tolist() == pred
        assert r["certified:clean_accuracy"] == pytest.approx((full == y).mean())
        assert r["certified:target"] == pytest.approx(
            np.mean((full[member] != y[member]).astype(float) - (inputs.clean_pred[member] != y[member])))
        assert r["certified:target_vs_smoothed_clean"] == pytest.approx(
            np.mean((full[member] != y[member]).astype(float) - (clean_direct[member] != y[member])))
        assert math.isnan(r["certified:poisons_removed"]) and math.isnan(r["certified:clean_removed"])
        assert math.isnan(r["fine-pruning:poisons_removed"]) and 0 <= r["fine-pruning:units_pruned"] <= 8


def test_parallel_equals_serial_with_certified_and_fine_pruning(inputs, serial):
    parallel = run_sweep(inputs, workers=2)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert repr(strip(serial)) == repr(strip(parallel))  # repr: NaN == NaN


def test_fine_pruning_prunes_lowest_validation_means_first(inputs):
    victim = fit_scratch(SPEC, inputs.victim, 0)
    d = parse_defenses([{**FINE_PRUNING, "max_drop": 0.5, "fine_tune_epochs": 0}])[0]  # prune only
    out = d.run(DefenseInputs(val=inputs.val, model=victim, seed=0))
    model, n = out.model, out.curve.n_pruned
    assert out.curve.kind == "linear" and out.curve.layer == "fc1" and out.fine_tune is None
    means = activations(victim, inputs.val.x, "relu1")["relu1"].mean(0)
    order = torch.argsort(means, stable=True).tolist()
    assert n >= 1
    after, before = activations(model, inputs.val.x, "relu1")["relu1"], activations(victim, inputs.val.x, "relu1")["relu1"]
    assert (after[:, order[:n]] == 0).all() and torch.equal(after[:, order[n:]], before[:, order[n:]])
    assert not any(m._forward_hooks for m in victim.modules())  # the undefended victim is untouched
    with pytest.raises(PoisonlabError, match="needs a clean validation split; set data.val_fraction > 0"):
        d.run(DefenseInputs(model=victim, seed=0))


def test_certified_curve_is_non_increasing_and_matches_the_library(inputs):
    d = inputs.defenses[0]
    out = d.cfg.clean_report(inputs.victim, inputs.test, seed=0, most_poisons=12)
    accs = [acc for _, acc in out["curve"]]
    assert [r for r, _ in out["curve"]] == list(range(13)) and out["rows"] == 40
    assert all(a >= b for a, b in itertools.pairwise(accs)) and 0 <= accs[-1] <= accs[0] <= 1
    rows = np.sort(np.random.default_rng([0, 0x43525456]).choice(len(inputs.test), 40, replace=False))
    ones = lambda a: np.hstack([a.double().numpy(), np.ones((len(a), 1))])
    lib = certified_accuracy_curve(ones(inputs.victim.x), inputs.victim.y.numpy(), ones(inputs.test.x[rows]),
                                   inputs.test.y.numpy()[rows], 0.2, 0.5, 12)
    assert out["curve"] == [[r, acc] for r, acc in lib]


# ------------------------------------------------------------------------- end to end
def test_tiny_run_writes_both_defenses(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(sub_steps, "load_data", lambda *a, **k: SPLIT)
    seen: list[SweepInputs] = []
    real = sub_steps.run_sweep
    monkeypatch.setattr(sub_steps, "run_sweep", lambda inp, w: seen.append(inp) or real(inp, w))
    subpops = "subpopulations={features: [color, size], min_test: 10, max_test: null, limit: 3}"
    defenses = "defenses=[{name: certified, curve_rows: 30}, {name: fine-pruning, label: fp, fine_tune_epochs: 2}]"
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "data.val_fraction=0.2", subpops, defenses])
    folder, m = sub_experiment.run_subpop_experiment(cfg)
    table = list(csv.DictReader((folder.path / "tables" / "defenses.csv").open()))
    assert [(r["defense"], float(r["alpha"])) for r in table] == [(d, a) for d in ("none", "certified", "fp")
                                                                   for a in (1, 2)]
    assert all(r["poisons removed"] == "" for r in table if r["defense"] != "none")  # not applicable: empty
    curve = list(csv.DictReader((folder.path / "tables" / "certified.csv").open()))
    most = max(r["n_poison"] for r in m["rows"])
    assert [int(r["flips r"]) for r in curve] == list(range(most + 1)) and m["certified"]["certified"]["max_r"] == most
    assert (folder.path / "plots" / "certified.png").is_file()
    assert [p["alpha"] for p in m["certified"]["certified"]["per_alpha"]] == [1.0, 2.0]
    assert all(0 <= r["certified:certified_accuracy"] <= 1 for r in m["rows"])
    # the validation split: clean victim rows, disjoint from D and from the attacker's rows (the poisons' source)
    (inp,) = seen
    key = lambda ds: {round(float(v), 6) for v in ds.x[:, -1]}  # planted_table's noise column
    assert len(inp.val) == m["data"]["validation"] == 120 and m["data"]["victim"] == 480
    assert not key(inp.val) & key(inp.victim) and not key(inp.val) & key(inp.attacker)
    assert key(inp.val) <= key(SPLIT.train)
    assert len(inp.val) + len(inp.victim) + len(inp.attacker) == len(SPLIT.train)


@pytest.mark.parametrize("overrides,message", [
    (["defenses=[{name: certified, q: 0.5}]"], "defenses[0].q must be a label-noise rate in (0, 0.5), got 0.5"),
    (["defenses=[{name: certified, q: 0}]"], "defenses[0].q must be a label-noise rate in (0, 0.5), got 0"),
    (["defenses=[{name: certified, lam: 0}]"], "defenses[0].lam must be a number > 0, got 0"),
    (["defenses=[{name: certified, lam: -1.0}]"], "defenses[0].lam must be a number > 0"),
    (["defenses=[{name: certified, curve_rows: 0}]"], "defenses[0].curve_rows must be an integer >= 1"),
    (["defenses=[{name: certified, curve_max_r: -2}]"], "defenses[0].curve_max_r must be an integer >= 0 or null"),
    (["defenses=[{name: certified, lamda: 1}]"], "unknown key 'defenses[0].lamda' for certified (did you mean 'lam'?)"),
    (["data.val_fraction=0.1", "defenses=[{name: fine-pruning, max_drop: 1.0}]"],
     "defenses[0].max_drop must be in [0, 1)"),
    (["data.val_fraction=0.1", "defenses=[{name: fine-pruning, max_drop: -0.1}]"],
     "defenses[0].max_drop must be in [0, 1)"),
    (["data.val_fraction=0.1", "defenses=[{name: fine-pruning, fine_tune_lr: 0}]"],
     "defenses[0].fine_tune_lr must be a number > 0"),
    (["data.val_fraction=0.1", "defenses=[{name: fine-pruning, fine_tune_epochs: -1}]"],
     "defenses[0].fine_tune_epochs must be an integer >= 0"),
    (["defenses=[trim, {name: fine-pruning}]"],
     "defenses[1] (fine-pruning) decides on a clean validation split, but data.val_fraction is 0; set data.val_fraction > 0"),
    (["data.val_fraction=1.0"], "data.val_fraction must be in [0, 1)"),
    (["data.val_fraction=0.1", "model.options={hidden: []}", "defenses=[fine-pruning]"],
     "defenses[0] (fine-pruning) prunes hidden units, but the model has no hidden layer"),
])
def test_bad_parameters_are_one_line_errors(overrides, message):
    with pytest.raises(PoisonlabError) as err:
        load_subpop_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_time_checks_fail_before_training(tmp_path, monkeypatch):
    three = DataSplit(*(Dataset(ds.x, ds.y, ["a", "b", "c"], ds.meta) for ds in (SPLIT.train, SPLIT.test)))
    monkeypatch.setattr(sub_steps, "load_data", lambda *a, **k: three)
    calls: list[int] = []
    monkeypatch.setattr(sub_steps, "fit_scratch", lambda *a, **k: calls.append(1))
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "defenses=[certified]"])
    with pytest.raises(PoisonlabError, match=r"needs binary labels \(2 classes\); this experiment's data have 3 "
                       "classes") as err:
        sub_experiment.run_subpop_experiment(cfg)
    assert "\n" not in str(err.value) and calls == []
