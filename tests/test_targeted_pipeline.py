"""The targeted family in the pipeline: its measure and the summary over victims (by hand), the
victim recipe (``victim:``: the transfer setting's frozen features, further seeds), its config
errors, and small end-to-end runs on the embedded digits data."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from poisonlab.attacks import AttackTestSet
from poisonlab.config import TrainConfig, VictimConfig, load_config
from poisonlab.data.base import Dataset
from poisonlab.families import load_any_config, run_config
from poisonlab.measures.targeted import (
    TargetedMeasure,
    over_victims_table,
    success_summary,
    wilson_interval,
)
from poisonlab.models import build_model
from poisonlab.pipeline.context import Context, TrainedModel
from poisonlab.pipeline.victim_fit import (
    LastLayerOnly,
    check_recipe,
    fit_by_recipe,
    last_linear,
)
from poisonlab.train import TrainResult, train_model
from one_line_errors import one_line

CPU = torch.device("cpu")
Z2 = 1.959964 ** 2


# -- the measure, by hand ------------------------------------------------------------------
def test_wilson_interval_hand_values():
    # 3 of 8: p = .375, centre (p + z^2/16) / (1 + z^2/8) = .41555, half-width .27871
    low, high = wilson_interval(3, 8)
    assert (low, high) == pytest.approx((0.1368443, 0.6942576), abs=1e-7)
    centre = (3 / 8 + Z2 / 16) / (1 + Z2 / 8)
    assert (low + high) / 2 == pytest.approx(centre, rel=1e-12)
    from scipy.stats import binomtest

    ci = binomtest(3, 8).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-7)
    assert [round(v, 4) for v in wilson_interval(5, 10)] == [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z2 / (10 + Z2)), abs=1e-15)  # 0 of n: [0, z^2/(n+z^2)]
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + Z2), 1.0), abs=1e-15)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_success_summary_by_hand():
    # 2 victims x 12 targets; shares per target below
    a = [1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    b = [1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    s = success_summary([a, b])
    shares = [1, .5, 1, .5, .5, 0, 0, .5, .5, 0, 0, 0]
    assert s["victims"] == 2 and s["targets"] == 12 and s["per_target_share"] == shares
    assert s["worst_1"] == 1.0
    assert s["worst_5"] == pytest.approx((1 + 1 + .5 + .5 + .5) / 5)
    assert s["worst_10"] == pytest.approx((1 + 1 + .5 * 5) / 10)
    assert s["mean"] == 9 / 24
    assert s["ci95"] == list(wilson_interval(9, 24))
    small = success_summary([[1, 0, 0]])
    assert small["worst_1"] == 1.0 and "worst_5" not in small and small["mean"] == pytest.approx(1 / 3)
    empty = success_summary([])
    assert empty["victims"] == 0 and math.isnan(empty["mean"]) and "worst_1" not in empty


def test_over_victims_and_its_table():
    m = TargetedMeasure()
    victims = [{"target_success": [1, 0, 0, 1, 1], "clean_accuracy": 0.9},
               {"target_success": [1, 1, 0, 0, 1], "clean_accuracy": 0.8},
               {"clean_accuracy": 0.7}]  # measured without targets: counts in clean accuracy only
    s = m.over_victims(victims)
    assert s["victims"] == 2 and s["per_target_share"] == [1, .5, 0, .5, 1] and s["mean"] == 0.6
    assert s["worst_5"] == pytest.approx(0.6) and s["clean_accuracy"] == [0.9, 0.8, 0.7]
    (row,) = over_victims_table(s)
    low, high = wilson_interval(6, 10)
    assert row["95% interval"] == f"{100 * low:.1f}–{100 * high:.1f}%" == "31.3–83.2%"
    assert row["poisoned (mean)"] == 0.6 and row["worst-1"] == 1 and row["worst-5"] == pytest.approx(0.6)
    assert row["worst-10"] is None
    assert row["clean acc. (min)"] == 0.7 and row["clean acc. (mean)"] == pytest.approx(0.8)
    (none,) = over_victims_table(success_summary([]))
    assert none["95% interval"] is None and none["clean acc. (min)"] is None


class ThirdsOracle(nn.Module):
    """Predicts class floor(3 * x[:, 0]) of 3."""

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0] * 3).floor().long().clamp(0, 2), 3).float()


def test_targeted_measure_counts_targets_given_the_poison_class():
    pred = torch.tensor([0, 1, 2, 2, 1, 0])
    x = ((pred.float() + 0.5) / 3).reshape(6, 1)
    test = Dataset(x, torch.tensor([0, 1, 2, 0, 1, 2]), list("abc"))  # rows 3 and 5 wrong
    ev = AttackTestSet(x[[3, 4, 1]], torch.tensor([2, 2, 2]), test.y[[3, 4, 1]], torch.tensor([3, 4, 1]))
    out, preds = TargetedMeasure().measure(ThirdsOracle(), test, ev, 4, CPU, "v")
    assert out["clean_accuracy"] == pytest.approx(4 / 6)
    assert out["target_success"] == [1, 0, 0] and out["target_predictions"] == [2, 1, 1]
    assert out["attack_success_rate"] == pytest.approx(1 / 3) and preds["targets"].tolist() == [2, 1, 1]
    out, preds = TargetedMeasure().measure(ThirdsOracle(), test, None, 4, CPU, "v")
    assert "attack_success_rate" not in out and set(preds) == {"clean"}
    assert TargetedMeasure().describe(ev) == {"targets": 3, "target_true_classes": [0, 1, 1]}


# -- the victim recipe ---------------------------------------------------------------------
def _bn_data(n=48):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for k in range(3):
        x[y == k, :, :, 2 * k:2 * k + 3] += 0.6
    return Dataset(x, y, list("abc"))


def _bn_model():
    torch.manual_seed(0)
    return build_model("small-cnn", (1, 8, 8), 3, {"width": 2, "convs_per_block": 1})  # conv-bn-relu x3, fc1, fc2


FAST = TrainConfig(epochs=2, batch_size=16, lr=0.1, channels_last=False)


def _fitted_reference(data):
    ref = _bn_model()
    train_model(ref, data, FAST, seed=0)
    return ref


def test_last_layer_only_freezes_everything_but_the_last_linear(one_thread):
    data = _bn_data()
    ref = _fitted_reference(data)
    assert float(ref.bn1.running_mean.abs().sum()) > 0  # real statistics to keep
    victim = copy.deepcopy(ref)
    wrapped = LastLayerOnly(victim, last_linear(victim))
    assert wrapped.layer == "fc2"
    assert [n for n, p in victim.named_parameters() if p.requires_grad] == ["fc2.weight", "fc2.bias"]
    wrapped.train()
    assert wrapped.training and victim.fc2.training and not victim.training
    assert not victim.bn1.training and not victim.dropout.training
    train_model(wrapped, data, FAST, seed=1)
    before, after = ref.state_dict(), victim.state_dict()
    for name in before:
        if name.startswith("fc2."):
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name  # weights and BatchNorm buffers, bit for bit
    assert wrapped.release() is victim and all(p.requires_grad for p in victim.parameters())
    # the control: frozen parameters alone do not stop batch norm from moving its statistics
    plain = copy.deepcopy(ref)
    for name, p in plain.named_parameters():
        p.requires_grad_(name.startswith("fc2."))
    train_model(plain, data, FAST, seed=1)
    assert not torch.equal(plain.bn1.running_mean, ref.bn1.running_mean)


def _ctx(victim, clean=None, model=None):
    cfg = load_config(None, [], victim=victim, device="cpu", train={"epochs": 1, "batch_size": 16, "lr": 0.1,
                                                                    "channels_last": False},
                      model=model or {"name": "small-cnn", "options": {"width": 2, "convs_per_block": 1}})
    return Context(cfg=cfg, family=None, device=CPU, start=0.0, clean=clean)


def test_fit_by_recipe_transfer_setting(one_thread):
    data = _bn_data()
    ref = _fitted_reference(data)
    ctx = _ctx({"init": "reference", "trainable": "last", "train": {"epochs": 3}},
               TrainedModel(ref, TrainResult()))
    torch.manual_seed(5)
    fresh = build_model("small-cnn", (1, 8, 8), 3, {"width": 2, "convs_per_block": 1})
    trained = fit_by_recipe(ctx, fresh, data, "victim", seed=1)
    assert trained.model is fresh and len(trained.result.history) == 3  # victim.train's epochs, not train's 1
    got, want = fresh.state_dict(), ref.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc2."))
    assert not torch.equal(got["fc2.weight"], want["fc2.weight"])
    assert all(p.requires_grad for p in fresh.parameters())  # released

    # from scratch, last layer only: the frozen layers keep the fresh model's own initialisation
    ctx = _ctx({"init": "scratch", "trainable": "last"})
    torch.manual_seed(6)
    fresh = build_model("small-cnn", (1, 8, 8), 3, {"width": 2, "convs_per_block": 1})
    init = copy.deepcopy(fresh.state_dict())
    fit_by_recipe(ctx, fresh, data, "victim", seed=1)
    assert all(torch.equal(fresh.state_dict()[k], init[k]) for k in init if not k.startswith("fc2."))
    assert not torch.equal(fresh.state_dict()["fc2.weight"], init["fc2.weight"])


def test_recipe_errors():
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert one_line("", last_linear, conv_only) == ("trainable 'last' (train.trainable or victim.trainable) needs a "
                                                    "model with a final nn.Linear layer; Sequential has none (use "
                                                    "trainable: all)")
    assert last_linear(build_model("mlp", (4,), 2, {"hidden": [3]})) == "out"
    assert last_linear(build_model("resnet18", (3, 8, 8), 2, {})) == "fc"
    one_line(r"^trainable 'last' \(train.trainable or victim.trainable\) needs a model with a final nn.Linear",
             check_recipe,
             _ctx({"trainable": "last"}), conv_only)
    one_line(r"^victim.init 'reference' needs the clean reference fitted first$", fit_by_recipe,
             _ctx({"init": "reference"}), _bn_model(), _bn_data(), "v", 1)
    est = build_model("logistic-regression", (1, 8, 8), 3, {})
    one_line(r"^victim.init 'reference' and victim.trainable 'last' need a torch network", fit_by_recipe,
             _ctx({"init": "reference"}, model={"name": "logistic-regression"}), est, _bn_data(), "v", 1)
    one_line(r"^victim.init, victim.trainable and victim.train apply to torch networks", check_recipe,
             _ctx({"train": {"epochs": 2}}, model={"name": "logistic-regression"}), est)


@pytest.mark.parametrize("victim,match", [
    ({"seeds": [0]}, r"^victim.seeds must be distinct and differ from the run's seed 0 \(the main victim's\), got \[0\]$"),
    ({"seeds": [1, 2, 1]}, r"^victim.seeds must be distinct and differ from the run's seed 0 .*got \[1, 2, 1\]$"),
    ({"seeds": list(range(1, 66))}, r"^victim.seeds lists 65 seeds; at most 64$"),
    ({"seeds": [-1]}, r"^victim.seeds must be in 0..4294967295, got -1$"),
    ({"train": {"epoch": 2}}, r"^unknown config key 'victim.train.epoch' .*allowed under 'victim.train': epochs,"),
    ({"train": {"epochs": 0}}, r"^victim.train.epochs must be >= 1, got 0$"),
    ({"trainable": "some"}, r"^config key 'victim.trainable' must be one of all, last, got 'some'$"),
    ({"warm": True}, r"^unknown config key 'victim.warm'"),
])
def test_victim_config_errors(victim, match):
    one_line(match, load_config, None, [], victim=victim, device="cpu")


def test_victim_config_merges_and_defaults():
    base = TrainConfig(epochs=7, lr=0.3)
    v = VictimConfig(train={"lr": 0.01})
    merged = v.train_config(base)
    assert (merged.lr, merged.epochs, base.lr) == (0.01, 7, 0.3)
    assert VictimConfig().is_default and VictimConfig(seeds=[3]).is_default
    assert not VictimConfig(init="reference").is_default and not v.is_default
    load_config(None, [], seed=4, victim={"seeds": [0, 1]}, device="cpu")  # another run seed: 0 is fine


# -- end to end on digits ------------------------------------------------------------------
def _run(tmp_path, attack, victim=None, save_weights=False, **train):
    fam, cfg = load_any_config(None, [], attack=attack, victim=victim, device="cpu",
                               train={"epochs": 3, "lr": 0.1, **train},
                               output={"dir": str(tmp_path), "plots": False, "save_weights": save_weights,
                                       "cache_baseline": False})
    assert fam.name == "targeted"
    return run_config(cfg)


GM = {"name": "gradient-matching", "poison_class": 3, "budget": 0.02, "steps": 5, "targets": {"n": 3}}


def test_gradient_matching_end_to_end_with_a_second_victim(tmp_path, one_thread):
    m = _run(tmp_path / "gm", GM, {"seeds": [1]}).metrics
    a, n_train = m["attack"], m["data"]["train"]
    assert a["n_poison"] == a["n_poison_images"] == round(0.02 * n_train) == 24
    rows, true = a["target_rows"], a["target_true_classes"]
    assert len(set(rows)) == 3 and all(0 <= r < m["data"]["test"] for r in rows) and 3 not in true
    assert a["perturbation_linf_max"] <= 16 / 255 * (1 + 1e-6)
    assert m["baseline"]["target_predictions"] == true  # correct_only: the clean reference gets them right
    main, second = m["victim"], m["victim_seed_1"]
    assert second["seed"] == 1
    for v in (main, second):
        assert v["target_success"] == [int(p == 3) for p in v["target_predictions"]]
    ov = m["over_victims"]
    assert ov["victims"] == 2 and ov["targets"] == 3
    assert ov["per_target_share"] == [(s + t) / 2 for s, t in zip(main["target_success"], second["target_success"])]
    hits = sum(main["target_success"]) + sum(second["target_success"])
    assert ov["mean"] == hits / 6 and ov["ci95"] == list(wilson_interval(hits, 6))
    assert ov["clean_accuracy"] == [main["clean_accuracy"], second["clean_accuracy"]]
    assert main["clean_accuracy"] != second["clean_accuracy"]  # a different seed, a different victim

    # the control with the same seed and budget: the same targets and the same number of poisons
    rn = _run(tmp_path / "rn", {**GM, "name": "random-noise"}).metrics
    assert rn["attack"]["target_rows"] == rows and rn["attack"]["n_poison"] == 24
    assert rn["attack"]["perturbation_linf_max"] == pytest.approx(16 / 255, abs=1e-6)
    assert rn["over_victims"]["victims"] == 1  # summarised for the targeted family without victim.seeds
    assert rn["baseline"]["clean_accuracy"] == m["baseline"]["clean_accuracy"]


def test_feature_collision_end_to_end_transfer_victim(tmp_path, one_thread):
    from safetensors.torch import load_file

    attack = {"name": "feature-collision", "poison_class": 3, "poisons_per_target": 2, "iterations": 20,
              "targets": {"n": 2}}
    out = _run(tmp_path, attack, {"init": "reference", "trainable": "last", "train": {"epochs": 1}},
               save_weights=True)
    m = out.metrics
    assert m["attack"]["n_poison"] == m["attack"]["n_poison_images"] == 4
    assert len(m["victim"]["history"]) == 1 and len(m["baseline"]["history"]) == 3
    base = load_file(out.path / "weights" / "baseline.safetensors")
    victim = load_file(out.path / "weights" / "victim.safetensors")
    assert sorted(k for k in base if not torch.equal(base[k], victim[k])) == ["fc2.bias", "fc2.weight"]
    assert m["over_victims"]["victims"] == 1 and m["over_victims"]["targets"] == 2


def test_errors_before_any_training(tmp_path, monkeypatch):
    from poisonlab.pipeline import fit

    def no_training(*a, **k):
        raise AssertionError("trained before the error")

    monkeypatch.setattr(fit, "fit_learner", no_training)
    one_line(r"^unknown config key 'attack.bogus'; allowed under 'attack': name, poison_class", _run, tmp_path,
             {**GM, "bogus": 1})
    one_line(r"^model has no layer 'fc9'", _run, tmp_path, {"name": "feature-collision", "layer": "fc9"})
    _, cfg = load_any_config(None, [], model={"name": "logistic-regression"}, victim={"trainable": "last"},
                             attack=GM, device="cpu", output={"dir": str(tmp_path), "cache_baseline": False})
    one_line(r"^train.trainable 'last' and victim.trainable 'last' need a torch network; remove them for an estimator$",
             run_config, cfg)


def test_budget_beyond_the_poison_class_is_refused(tmp_path, one_thread):
    # a fixed poison class: refused in the checks, before the clean reference is trained
    one_line(r"^gradient-matching asks for 242 poison images but the poison class 3 has \d+ training rows; "
             r"lower the budget$", _run, tmp_path, {**GM, "budget": 0.2}, epochs=1)
    assert not list(tmp_path.glob("*/metrics.json"))  # nothing half-written
