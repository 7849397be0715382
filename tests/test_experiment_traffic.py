"""Issue-3 wiring on a GTSRB stand-in (43 synthetic classes): the traffic-sign table, backdoor
neurons, the pruning-aware attack against every defense, and the Swedish transfer task."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

import poisonlab.experiment as experiment
import poisonlab.pipeline.steps as steps
from poisonlab.cli import main
from poisonlab.config import load_config
from poisonlab.data.base import DataSplit
from poisonlab.data.gtsrb_groups import SWEDISH_GROUPS
from poisonlab.data.splits import carve_validation
from poisonlab.defenses import channel_means
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.store import list_runs, load_weights

sys.path.insert(0, str(Path(__file__).parent))
from tiny_data import signs43  # noqa: E402

SPLIT = DataSplit(signs43(12, 0), signs43(4, 1))
BASE = ["analysis.traffic_signs=true", "data.name=gtsrb", "model.name=small-cnn", "model.options={convs_per_block: 1, width: 8}",
        "train.epochs=8", "train.optimizer=adam", "train.lr=0.005", "train.batch_size=64",
        "attack={name: badnets, p: 0.02, source: 14, target: 1, "
        "trigger: {kind: patch, color: [1, 1, 0], size: 4, corner: bottom-right}}"]
FULL = BASE + ["pruning_aware={step: 2}",
               "defenses=[{name: pruning, step: 2}, {name: fine-pruning, step: 2, fine_tune_epochs: 2}]",
               "transfer={epochs: 4, lr: 0.01, strengthen_k: [1, 10]}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out_dir = tmp_path_factory.mktemp("runs")
    patch = pytest.MonkeyPatch()
    patch.setattr(steps, "load_data", lambda *a, **k: SPLIT)
    try:
        cfg = load_config(None, FULL + [f"output.dir={out_dir}"], device="cpu")
        outcome = experiment.run_experiment(cfg, quiet=True)
    finally:
        patch.undo()
    return outcome, out_dir


def test_traffic_groups_agree_with_the_attack_metrics(run):
    out, _ = run
    g = out.metrics["traffic_groups"]
    assert g["trigger"] == "square" and (g["source"], g["target"]) == (14, 1)
    # the stop row of the backdoor column is the attack success on triggered stop signs
    assert g["badnet_backdoor"]["stop"] == out.metrics["victim"]["attack_success_rate"]
    assert g["baseline_clean"]["average"] == out.metrics["baseline"]["clean_accuracy"]
    assert g["badnet_clean"]["average"] == out.metrics["victim"]["clean_accuracy"]
    rows = list(csv.DictReader((out.path / "tables" / "traffic_groups.csv").open()))
    assert [r["group"] for r in rows] == ["stop", "speed limit", "warning", "other", "average"]
    assert float(rows[0]["square backdoor"]) == g["badnet_backdoor"]["stop"]  # plain numbers, full precision
    for r, key in zip(rows, ["stop", "speed limit", "warning", "other", "average"]):
        assert float(r["baseline clean"]) == g["baseline_clean"][key] and float(r["square clean"]) == g["badnet_clean"][key]
    md = (out.path / "tables" / "traffic_groups.md").read_text()
    assert f"| stop | {100 * g['baseline_clean']['stop']:.2f}% |" in md
    for plot in ("traffic_groups", "backdoor_neurons", "transfer", "pruning_curve_pruning_pruning_aware_badnet"):
        assert (out.path / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backdoor_neurons_are_in_the_run(run):
    out, _ = run
    n = out.metrics["backdoor_neurons"]
    assert n["layer"] == "conv3" and sorted(n["ranking"]) == list(range(32))
    diff = [t - c for t, c in zip(n["triggered_mean"], n["clean_mean"])]
    assert diff[n["ranking"][0]] == max(diff)
    rows = list(csv.DictReader((out.path / "tables" / "backdoor_neurons.csv").open()))
    assert int(rows[0]["channel"]) == n["ranking"][0] and len(rows) == 32


def test_pruning_aware_attack_and_defense_table(run):
    out, out_dir = run
    pa = out.metrics["pruning_aware"]
    summary = next(r["summary"] for r in list_runs(out_dir) if r["id"] == out.run_id)
    assert summary["pruning_aware_attack_success"] == pa["attack_success_rate"]
    assert summary["pruning_aware_fine-pruning_attack_success"] == pa["defenses"]["fine-pruning"]["attack_success_rate"]
    assert summary["fine-pruning_attack_success"] == out.metrics["defenses"]["fine-pruning"]["attack_success_rate"]
    assert pa["n_pruned"] > 0 and pa["n_pruned"] == len(pa["pruned"])
    assert set(pa["defenses"]) == {"pruning", "fine-pruning"} and set(out.metrics["defenses"]) == {"pruning", "fine-pruning"}
    # re-inserted channels stay dormant on clean training data (saved weights, fresh model)
    model = build_model("small-cnn", (3, 20, 20), 43, {"convs_per_block": 1, "width": 8})
    load_weights(model, out.path / "weights" / "pruning_aware.safetensors")
    _, val = carve_validation(SPLIT.train, 0.1, 0)
    means = channel_means(model.eval(), "conv3", val.x)
    assert means[pa["pruned"]].abs().max() == 0
    rows = list(csv.DictReader((out.path / "tables" / "defenses.csv").open()))
    assert [(r["attack"], r["defense"]) for r in rows] == [
        (a, d) for a in ("BadNet", "pruning-aware BadNet") for d in ("none", "pruning", "fine-pruning")]


def test_transfer_students_on_the_swedish_task(run):
    out, _ = run
    t = out.metrics["transfer"]
    assert t["classes"] == SWEDISH_GROUPS and t["mode"] == "feature-extractor"
    train, _ = carve_validation(SPLIT.train, 0.1, 0)
    assert t["teacher_train"] + t["student_train"] == len(train)
    assert out.metrics["data"]["train"] == t["teacher_train"]
    assert [s["name"] for s in t["students"]] == ["clean teacher", "BadNet teacher", "BadNet teacher, k=10"]
    assert t["strengthen_layer"] == "conv3" and t["strengthen_channels"]
    if out.metrics["backdoor_neurons"]["flagged"]:
        assert t["strengthen_channels"] == out.metrics["backdoor_neurons"]["flagged"]
    else:
        assert t["strengthen_channels"] == out.metrics["backdoor_neurons"]["ranking"][:3]
    rows = list(csv.DictReader((out.path / "tables" / "transfer.csv").open()))
    assert [r["class"] for r in rows] == SWEDISH_GROUPS + ["average (all test images)"]
    s = t["students"][1]
    assert float(rows[-1]["BadNet teacher: backdoor"]) == s["backdoor_accuracy"]  # plain numbers, full precision
    assert [float(r["BadNet teacher: clean"]) for r in rows[:-1]] == s["per_class_clean"]
    md = (out.path / "tables" / "transfer.md").read_text()
    assert f"| {100 * s['backdoor_accuracy']:.2f}% |" in md.splitlines()[-1]


def test_traffic_table_command_combines_runs(run, tmp_path, capsys):
    out, out_dir = run
    target = tmp_path / "table.csv"
    with pytest.raises(SystemExit) as exit_:
        main(["traffic-table", out.run_id, out.run_id, "--dir", str(out_dir), "--csv", str(target),
              "--plot", str(tmp_path / "t.png")])
    assert exit_.value.code == 0
    rows = list(csv.DictReader(target.open()))
    assert list(rows[0]) == ["group", "baseline clean", "square clean", "square backdoor",
                             "square' clean", "square' backdoor"]
    assert (tmp_path / "t.png").is_file()


def test_traffic_table_refuses_a_run_without_groups(tmp_path, capsys):
    cfg = load_config(None, ["train.epochs=1", f"output.dir={tmp_path}", "output.plots=false",
                             "attack={name: badnets, p: 0.1}"], device="cpu")
    out = experiment.run_experiment(cfg, quiet=True)
    assert "traffic_groups" not in out.metrics
    with pytest.raises(SystemExit) as exit_:
        main(["traffic-table", out.run_id, "--dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "has no traffic-sign groups" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,message", [
    (["pruning_aware={step: 2}"], "pruning_aware trains a backdoored model; add an attack"),
    (BASE[-1:] + ["pruning_aware={stepp: 2}"], "unknown config key 'pruning_aware.stepp'"),
    (BASE[-1:] + ["pruning_aware={retrain: 3}"], "pruning_aware.retrain must be a mapping"),
    (BASE[-1:] + ["pruning_aware={retrain: {epoch: 3}}"], "unknown config key 'pruning_aware.retrain.epoch'"),
    (BASE[-1:] + ["pruning_aware={train: {epochs: 3}}"], "set step (c) under pruning_aware.retrain"),
    (BASE[-1:] + ["pruning_aware={step: 2}", "data.val_fraction=0"], "set data.val_fraction > 0"),
    (["transfer={epochs: 1}"], "regroups the 43 GTSRB classes, but this data set has 10 classes"),
    (["transfer={mode: frozen}"], "'transfer.mode' must be one of feature-extractor, fine-tune, got 'frozen'"),
    (["analysis={z: -1}"], "analysis.z must be >= 0"),
])
def test_bad_issue3_config_is_one_line_error_before_training(tmp_path, overrides, message):
    with pytest.raises(PoisonlabError) as err:
        cfg = load_config(None, ["train.epochs=1", f"output.dir={tmp_path}"] + overrides, device="cpu")
        experiment.run_experiment(cfg, quiet=True)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / ".cache").exists()


def test_transfer_same_task_on_digits(tmp_path):
    plain = load_config(None, ["train.epochs=2", f"output.dir={tmp_path}", "output.plots=false"], device="cpu")
    experiment.run_experiment(plain, quiet=True)
    cfg = load_config(None, ["train.epochs=2", f"output.dir={tmp_path}", "output.plots=false",
                             "transfer={task: same, epochs: 1, teacher_fraction: 0.6}"], device="cpu")
    out = experiment.run_experiment(cfg, quiet=True)
    assert out.metrics["baseline"]["from_cache"] is False  # the teacher trains on its part only: no cache hit
    t = out.metrics["transfer"]
    assert [s["name"] for s in t["students"]] == ["clean teacher"]  # no attack: only the clean teacher
    assert len(t["classes"]) == 10 and t["task"] == "same"
    assert out.metrics["data"]["train"] == t["teacher_train"] and t["student_train"] > 0
    assert t["students"][0]["clean_accuracy"] == t["students"][0]["backdoor_accuracy"]  # no trigger to stamp
    assert torch.isfinite(torch.tensor(t["students"][0]["per_class_clean"])).all()


def test_strengthening_channel_choice():
    from poisonlab.transfer import TransferConfig
    from poisonlab.transfer_run import strengthening_channels

    assert strengthening_channels(TransferConfig(strengthen_channels=[4, 2]), [7], [7, 1]) == ([4, 2], "configured")
    assert strengthening_channels(TransferConfig(), [7, 5], [7, 5, 1])[0] == [7, 5]
    assert strengthening_channels(TransferConfig(), [], [9, 3, 1, 0])[0] == [9, 3, 1]
    with pytest.raises(PoisonlabError, match="set transfer.strengthen_channels"):
        strengthening_channels(TransferConfig(), None, None)


@pytest.mark.parametrize("overrides,message", [
    (["analysis={layer: nosuch}"], "model has no layer 'nosuch'"),
    (["analysis={layer: fc1}"], "layer 'fc1' is a Linear, not a convolution"),
    (["transfer={task: same, strengthen_k: [1, 5], strengthen_layer: nosuch}"], "model has no layer 'nosuch'"),
    (["pruning_aware={layer: fc1}"], "'fc1' is a Linear, not a Conv2d"),
])
def test_unknown_layer_names_fail_before_training(tmp_path, overrides, message):
    cfg = load_config(None, ["train.epochs=1", f"output.dir={tmp_path}", "attack={name: badnets, p: 0.1}"]
                      + overrides, device="cpu")
    with pytest.raises(PoisonlabError, match=message):
        experiment.run_experiment(cfg, quiet=True)
    assert not (tmp_path / ".cache").exists()  # nothing was trained
