"""The subpopulation sweep and experiment (Jagielski et al. 2021) on a tiny planted table."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import poisonlab.subpop.experiment as sub_experiment
import poisonlab.subpop.steps as sub_steps
from poisonlab.cli import main
from poisonlab.data.base import DataSplit, Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.store import list_runs
from poisonlab.subpop import feature_match, membership
from poisonlab.subpop.config import load_subpop_config
from poisonlab.subpop.learners import LearnerSpec, fit_scratch, predictions
from poisonlab.subpop.sweep import SweepInputs, run_sweep
from poisonlab.train import TrainConfig

COLORS, SIZES = np.array(["red", "green", "blue"]), np.array(["S", "M", "L"])


def planted_table(n: int, seed: int) -> Dataset:
    """Rows with two categorical columns, one-hot in ``x`` plus one noise feature; label 1 iff size L."""
    rng = np.random.default_rng(seed)
    color, size = COLORS[rng.integers(0, 3, n)], SIZES[rng.integers(0, 3, n)]
    onehot = np.concatenate([(color[:, None] == COLORS).astype(np.float32), (size[:, None] == SIZES).astype(np.float32),
                             rng.normal(size=(n, 1)).astype(np.float32)], axis=1)
    y = (size == "L").astype(np.int64)
    return Dataset(torch.from_numpy(onehot), torch.from_numpy(y), ["no", "yes"], {"color": color, "size": size})


SPEC = LearnerSpec(name="mlp", options={"hidden": [8]},
                   train=TrainConfig(epochs=30, batch_size=64, optimizer="adam", lr=0.02, schedule="constant"))


@pytest.fixture(scope="module")
def sweep_inputs(one_thread) -> SweepInputs:
    victim, attacker, test = planted_table(600, 0), planted_table(600, 1), planted_table(600, 2)
    subs = feature_match(attacker.meta, test.meta, ["color", "size"], 10, None)[:3]
    clean = fit_scratch(SPEC, victim, 0)
    return SweepInputs(SPEC, victim, attacker, test, None, predictions(clean, test.x),
                       [membership(s, attacker.meta) for s in subs], [membership(s, test.meta) for s in subs],
                       [1, 1, 1], [0.5, 2.0], 0)


def test_parallel_sweep_equals_serial(sweep_inputs):
    serial = run_sweep(sweep_inputs, workers=1)
    parallel = run_sweep(sweep_inputs, workers=2)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in serial]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in parallel]
    assert [(r["index"], r["alpha"]) for r in serial] == [(i, a) for i in range(3) for a in (0.5, 2.0)]
    n = [int(m.sum()) for m in sweep_inputs.attacker_members]
    assert [r["n_poison"] for r in serial] == [int(np.floor(a * k + 0.5)) for k in n for a in (0.5, 2.0)]


def test_label_flip_really_damages_the_subpopulation(sweep_inputs):
    # the three subpopulations are (blue, L), (blue, M), (blue, S); every poison says "yes" (1),
    # the true label of size L only: at alpha 2 the victim learns the flip for M and S
    rows = {(r["index"], r["alpha"]): r for r in run_sweep(sweep_inputs, workers=1)}
    assert all(abs(r["collateral"]) <= 0.05 for r in rows.values())
    assert rows[(0, 2.0)]["target"] <= 0.1              # poisons agree with the truth: no damage
    assert rows[(1, 2.0)]["target"] >= 0.5 and rows[(2, 2.0)]["target"] >= 0.5
    assert rows[(1, 2.0)]["subpop_accuracy_after"] == pytest.approx(
        rows[(1, 2.0)]["subpop_accuracy_before"] - rows[(1, 2.0)]["target"])


def _patched(monkeypatch, split: DataSplit) -> None:
    monkeypatch.setattr(sub_steps, "load_data", lambda *a, **k: split)


SPLIT = DataSplit(planted_table(1200, 3), planted_table(600, 4))
BASE = ["model={name: mlp, options: {hidden: [8]}, train: {epochs: 10, batch_size: 64, optimizer: adam, "
        "lr: 0.02, schedule: constant}}", "workers=1", "attack={alphas: [1.0, 2.0]}"]


def test_feature_match_experiment_writes_tables_and_index(tmp_path, monkeypatch, one_thread):
    _patched(monkeypatch, SPLIT)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "subpopulations={features: [color, size], "
                                           "min_test: 10, max_test: null}"])
    folder, m = sub_experiment.run_subpop_experiment(cfg)
    assert m["subpopulations"]["count"] == 9 and m["retrainings"] == 18
    assert m["data"]["victim"] + m["data"]["attacker"] == 1200
    rows = list(csv.DictReader((folder.path / "tables" / "subpopulations.csv").open()))
    assert len(rows) == 18 and {r["alpha"] for r in rows} == {"1.0", "2.0"}
    # a poison label is the least likely class of the attacker's model: for (x, L) rows that is "no" (0)
    for r in rows:
        assert (r["label"] == "0") == r["description"].endswith("size=L")
    summary = {(s["alpha"], s["k"]): s for s in m["summary"]}
    tops = sorted((float(r["target"]) for r in rows if r["alpha"] == "2.0"), reverse=True)
    assert summary[(2.0, 5)]["target_worst_k"] == pytest.approx(np.mean(tops[:5]))
    assert (folder.path / "plots" / "target_damage.png").is_file()
    assert "hardest-hit" in (folder.path / "tables" / "hardest_hit.md").read_text()
    index = list_runs(tmp_path)
    assert index[0]["summary"]["subpopulations"] == 9 and m["time"]["total_seconds"] > 0


def test_cluster_match_experiment(tmp_path, monkeypatch, one_thread):
    _patched(monkeypatch, SPLIT)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "output.plots=false",
                                           "subpopulations={kind: cluster-match, n_clusters: 6, pca_dims: 3, "
                                           "min_test: 5, max_test: null}", "attack={alphas: [1.0], label: 1}"])
    _, m = sub_experiment.run_subpop_experiment(cfg)
    assert 1 <= m["subpopulations"]["count"] <= 6 and m["subpopulations"]["representation_dims"] == 8
    assert all(r["label"] == 1 for r in m["rows"])
    assert all(r["subpop_id"].startswith("cluster:") for r in m["rows"])


@pytest.mark.parametrize("overrides,message", [
    (["attack={alphas: [0]}"], "attack.alphas must be a non-empty list of numbers > 0"),
    (["attack={alphas: [1, 1]}"], "attack.alphas lists a value twice"),
    (["data={attacker_fraction: 1.5}"], "data.attacker_fraction must be in (0, 1)"),
    (["subpopulations={min_test: 50, max_test: 10}"], "max_test (10) must be >= min_test (50)"),
    (["subpopulations={kind: feature}"], "'subpopulations.kind' must be one of feature-match, cluster-match"),
    (["model={mode: frozen}"], "'model.mode' must be one of scratch, transfer, fine-tune"),
    (["attak={alphas: [1]}"], "unknown config key 'attak' (did you mean 'attack'?)"),
    (["workers=0"], "workers must be >= 1"),
])
def test_bad_config_is_a_one_line_error(overrides, message):
    with pytest.raises(PoisonlabError) as err:
        load_subpop_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_time_errors(tmp_path, monkeypatch, one_thread):
    _patched(monkeypatch, SPLIT)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "attack={alphas: [1.0], label: 5}"])
    with pytest.raises(PoisonlabError, match="attack.label 5 is out of range"):
        sub_experiment.run_subpop_experiment(cfg)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "subpopulations={features: [colour]}"])
    with pytest.raises(PoisonlabError, match="colour"):
        sub_experiment.run_subpop_experiment(cfg)
    no_meta = DataSplit(Dataset(SPLIT.train.x, SPLIT.train.y, ["no", "yes"]), Dataset(SPLIT.test.x, SPLIT.test.y, ["no", "yes"]))
    _patched(monkeypatch, no_meta)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}"])
    with pytest.raises(PoisonlabError, match="FeatureMatch needs categorical columns"):
        sub_experiment.run_subpop_experiment(cfg)
    assert not any(p.name.startswith("2") for p in tmp_path.iterdir())  # no run folder left behind


def test_cli_subpop_command(tmp_path, monkeypatch, capsys, one_thread):
    _patched(monkeypatch, SPLIT)
    config = tmp_path / "c.yaml"
    config.write_text("name: tiny\nsubpopulations: {features: [color, size], min_test: 10, max_test: null}\n"
                      "model: {name: mlp, options: {hidden: [8]}, train: {epochs: 5, optimizer: adam, lr: 0.02}}\n"
                      "attack: {alphas: [1.0]}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["subpop", str(config), "--output", str(tmp_path / "runs"), "--workers", "1", "-q"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "9 subpopulations x 1 alphas = 9 retrainings on 1 worker(s)" in out


@pytest.mark.parametrize("mode", ["transfer", "fine-tune"])
def test_transfer_and_fine_tune_modes(mode, one_thread):
    from poisonlab.subpop.learners import fit_victim

    data = planted_table(200, 5)
    spec = LearnerSpec(name="mlp", options={"hidden": [8]}, mode=mode,
                       train=TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=0.02, schedule="constant"))
    pretrained = fit_scratch(spec, data, 0)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    model = fit_victim(spec, pretrained, planted_table(200, 6), 0)
    after = model.state_dict()
    assert all(torch.equal(before[k], pretrained.state_dict()[k]) for k in before)  # the clean model is untouched
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if mode == "transfer":
        assert changed == {"out.weight", "out.bias"}  # only the last layer trains
    else:
        assert {"fc1.weight", "out.weight"} <= changed
    with pytest.raises(PoisonlabError, match="continues a clean model"):
        fit_victim(spec, None, data, 0)


def test_unknown_cluster_layer_fails_before_training(tmp_path, monkeypatch):
    _patched(monkeypatch, SPLIT)
    cfg = load_subpop_config(None, BASE + [f"output.dir={tmp_path}", "subpopulations={kind: cluster-match, layer: fc9}"])
    calls = []
    monkeypatch.setattr(sub_steps, "fit_scratch", lambda *a, **k: calls.append(1))
    with pytest.raises(PoisonlabError, match="model has no layer 'fc9'"):
        sub_experiment.run_subpop_experiment(cfg)
    assert calls == []
