"""STRIP (Gao et al. 2019) and Neural Cleanse (Wang et al. 2019) as registered defenses: measured
with their refusals, thresholds from validation data only, unlearning, config errors, a digits run."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_inference_defenses import TARGET, separable6
from torch import nn

from poisonlab.attacks import AttackTestSet, BadNets
from poisonlab.config import load_config
from poisonlab.data.base import Dataset
from poisonlab.defend import check_defenses
from poisonlab.defenses import DEFENSES, RejectingClassifier, StripGuard
from poisonlab.defenses.detector_defenses import (
    NeuralCleanseConfig,
    StripConfig,
    neural_cleanse_defense,
    strip_defense,
    strip_split,
    unlearning_set,
)
from poisonlab.defenses.strip import fit_threshold, strip_entropy
from poisonlab.errors import PoisonlabError
from poisonlab.experiment import evaluate, run_experiment
from poisonlab.models import build_model
from poisonlab.train import TrainConfig, predict, train_model

CFG = load_config(None, [])
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backdoored(one_thread):
    """A linear softmax classifier on 6 toy classes with a BadNets 3x3 pattern backdoor to label 0
    (p = 0.2), clean validation and test data, the triggered test set."""
    attack = BadNets.from_config({"p": 0.2, "target": TARGET, "trigger": {"kind": "pattern"}})
    poisoned = attack.poison(separable6(240, 1), np.random.default_rng(0))
    torch.manual_seed(0)
    model = build_model("mlp", (1, 16, 16), 6, {"hidden": []})
    train_model(model, poisoned.dataset, TrainConfig(epochs=40, batch_size=16, lr=0.05), seed=0)
    test = separable6(120, 2)
    return model, separable6(120, 3), test, attack.evaluation_set(test)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# -- measuring a model that refuses inputs ----------------------------------------------------------
class _Refuser(RejectingClassifier):
    """3 classes: answers the class in pixel 0 (as 0, 1, 2), refuses (class 3) when pixel 1 is set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        logits = nn.functional.one_hot(flat[:, 0].long(), 4).float()
        logits[:, 3] = 2 * (flat[:, 1] > 0.5).float()
        return logits


def _images(cls: list[int], refused: list[bool]) -> torch.Tensor:
    x = torch.zeros(len(cls), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(cls, dtype=torch.float32)
    x[:, 0, 0, 1] = torch.tensor(refused, dtype=torch.float32)
    return x


def test_evaluate_counts_refusals_as_errors_and_failed_attacks():
    # clean: true 0 0 1 2; answers 0, refused, 1, 1 -> 2 of 4 right, 1 of 4 refused
    test = Dataset(_images([0, 0, 1, 1], [False, True, False, False]), torch.tensor([0, 0, 1, 2]), ["a", "b", "c"])
    # triggered (target 0): answers 0 (hit), refused but 0 underneath (a miss), 2 (a miss)
    aset = AttackTestSet(_images([0, 0, 2], [False, True, False]), torch.zeros(3, dtype=torch.int64),
                         torch.tensor([1, 2, 2]), torch.arange(3))
    m, preds = evaluate(_Refuser(), test, aset, CFG, CPU, "refuser")
    assert preds["clean"].tolist() == [0, 3, 1, 1]
    assert m["clean_accuracy"] == pytest.approx(0.5) and m["clean_rejected_rate"] == pytest.approx(0.25)
    assert m["per_class_clean_error"][0] == pytest.approx(0.5)  # the refused 0 is an error of class 0
    assert m["confusion_clean"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]  # answered inputs only
    assert m["attack_success_rate"] == pytest.approx(1 / 3) and m["triggered_rejected_rate"] == pytest.approx(1 / 3)
    assert m["per_class_backdoor_error"][1:] == [0.0, 1.0]
    assert m["confusion_triggered"] == [[0, 0, 0], [1, 0, 0], [0, 0, 1]]
    # untargeted: any wrong label is a success, but a refusal is not
    untargeted = AttackTestSet(aset.x, aset.target, torch.tensor([2, 2, 2]), aset.rows, untargeted=True)
    m, _ = evaluate(_Refuser(), test, untargeted, CFG, CPU, "refuser")
    assert m["attack_success_rate"] == pytest.approx(1 / 3)  # only the first (0 != 2); the refused one fails

    # a plain model gets no rejection keys
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    m, _ = evaluate(plain, test, aset, CFG, CPU, "plain")
    assert "clean_rejected_rate" not in m and "triggered_rejected_rate" not in m


# -- STRIP ----------------------------------------------------------------------------------------
def test_strip_defense_rejects_triggered_inputs_with_a_validation_threshold(backdoored):
    model, val, test, aset = backdoored
    before = _state(model)
    undefended, _ = evaluate(model, test, aset, CFG, CPU, "badnet")
    assert undefended["attack_success_rate"] >= 0.9 and undefended["clean_accuracy"] >= 0.95

    out = strip_defense(model, StripConfig(frr=0.05, n_overlays=12), val, test, aset, seed=3)
    guard = out.model
    assert isinstance(guard, StripGuard) and _same(model, before)  # the suspect model is untouched
    # the threshold: the 5% quantile of STRIP entropies of the validation rows not used as overlays
    pool, fit = strip_split(len(val), 0.5, 3)
    assert set(pool).isdisjoint(fit) and len(pool) + len(fit) == len(val)
    expected = fit_threshold(strip_entropy(model, val.x[fit], val.x[pool], 12, seed=3), 0.05)
    assert out.extra["threshold"] == pytest.approx(expected) == guard.threshold
    assert out.extra["frr_validation"] == pytest.approx(0.05, abs=1 / len(fit))
    # the test data never moves it
    assert strip_defense(model, StripConfig(frr=0.05, n_overlays=12), val, None, None, seed=3).extra["threshold"] \
        == out.extra["threshold"]

    m, preds = evaluate(guard, test, aset, CFG, CPU, "strip")
    assert m["triggered_rejected_rate"] >= 0.9  # most triggered inputs are refused
    assert m["attack_success_rate"] <= 0.1 < undefended["attack_success_rate"]
    assert m["clean_rejected_rate"] <= 0.15 and m["clean_accuracy"] >= undefended["clean_accuracy"] - 0.15
    # attack success = answered and the target; the rejected column wins exactly where the entropy is low
    flagged = guard.entropies(aset.x) < guard.threshold
    assert np.array_equal(preds["triggered"].numpy() == 6, flagged)
    hit = (~flagged) & (predict(model, aset.x) == TARGET).numpy()
    assert m["attack_success_rate"] == pytest.approx(hit.mean())
    # deterministic under the seed (for the same batches: overlays are drawn by row position in a batch)
    assert torch.equal(predict(guard, aset.x, batch_size=CFG.train.eval_batch_size), preds["triggered"])


# -- Neural Cleanse -----------------------------------------------------------------------------------
def test_neural_cleanse_defense_flags_the_target_and_unlearns_the_backdoor(backdoored):
    model, val, test, aset = backdoored
    before = _state(model)
    cfg = NeuralCleanseConfig(steps=60, batch_size=32, max_images=90, unlearn_epochs=8, unlearn_lr=0.05,
                              unlearn_batch_size=16)
    out = neural_cleanse_defense(model, cfg, val, test, aset, seed=0)
    e = out.extra
    assert _same(model, before)
    assert e["flagged_labels"][0] == TARGET and e["target_flagged"] and e["attack_targets"] == [TARGET]
    assert len(e["mask_l1"]) == len(e["anomaly_index"]) == 6 and int(np.argmin(e["mask_l1"])) == TARGET
    assert all(e["anomaly_index"][t] > 2 for t in e["flagged_labels"])
    assert all(a <= 2 for t, a in enumerate(e["anomaly_index"]) if t not in e["flagged_labels"])
    assert e["reverse_images"] == 90 and e["mitigated"] and e["unlearning_stamped"] == 24  # 20% of 120
    assert out.fine_tune is not None and len(out.fine_tune.history) == 8
    m, _ = evaluate(out.model, test, aset, CFG, CPU, "nc")
    assert m["attack_success_rate"] <= 0.2 and m["clean_accuracy"] >= 0.9
    assert "clean_rejected_rate" not in m  # a repaired model, not a gate

    # detection only: the model is returned as it was
    same = neural_cleanse_defense(model, NeuralCleanseConfig(steps=60, batch_size=32, max_images=90, mitigate="none"),
                                  val, test, aset, seed=0)
    assert same.extra["flagged_labels"] == e["flagged_labels"] and not same.extra["mitigated"]
    assert same.extra["unchanged_because"] == "mitigate is none" and _same(same.model, before)
    # nothing flagged (an unreachable threshold): nothing unlearned
    none = neural_cleanse_defense(model, NeuralCleanseConfig(steps=5, threshold=1e9), val, None, None, seed=0)
    assert none.extra["flagged_labels"] == [] and none.extra["unchanged_because"] == "no label was flagged"
    assert _same(none.model, before) and "target_flagged" not in none.extra


def test_unlearning_set_stamps_a_seeded_share_and_keeps_labels():
    val = separable6(30, 9)
    masks, patterns = torch.zeros(2, 16, 16), torch.ones(2, 1, 16, 16)
    masks[0, 0, 0] = masks[1, 15, 15] = 1.0
    data, rows = unlearning_set(val, masks, patterns, 0.2, seed=4)
    assert len(rows) == 6 and torch.equal(data.y, val.y)
    changed = (data.x != val.x).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(rows.tolist())
    stamped = data.x[torch.from_numpy(rows)]
    assert (stamped[0::2, 0, 0, 0] == 1).all() and (stamped[1::2, 0, 15, 15] == 1).all()  # the triggers in turn
    assert np.array_equal(rows, unlearning_set(val, masks, patterns, 0.2, seed=4)[1])


# -- registry and config errors ------------------------------------------------------------------------
def test_registered_as_detectors():
    for name, kind in (("strip", "input-detector"), ("neural-cleanse", "model-repair")):
        spec = DEFENSES.get(name)
        assert spec.kind == kind and ("Gao et al." in spec.description or "Wang et al." in spec.description)
        assert spec.needs == {"images", "validation"}
    assert DEFENSES.get("spectral-signatures").kind == "filter"


@pytest.mark.parametrize("section,key", [
    ({"name": "strip", "frr": 0}, "defense.frr"),
    ({"name": "strip", "frr": 1.0}, "defense.frr"),
    ({"name": "strip", "n_overlays": 0}, "defense.n_overlays"),
    ({"name": "strip", "alpha": 1.5}, "defense.alpha"),
    ({"name": "strip", "pool_share": 1}, "defense.pool_share"),
    ({"name": "strip", "batch_size": 0}, "defense.batch_size"),
    ({"name": "strip", "label": "a b"}, "defense.label"),
    ({"name": "strip", "n_overlay": 5}, "defense.n_overlay"),
    ({"name": "neural-cleanse", "steps": 0}, "defense.steps"),
    ({"name": "neural-cleanse", "lr": 0}, "defense.lr"),
    ({"name": "neural-cleanse", "lam": -0.1}, "defense.lam"),
    ({"name": "neural-cleanse", "threshold": 0}, "defense.threshold"),
    ({"name": "neural-cleanse", "batch_size": 0}, "defense.batch_size"),
    ({"name": "neural-cleanse", "max_images": 0}, "defense.max_images"),
    ({"name": "neural-cleanse", "mitigate": "prune"}, "defense.mitigate"),
    ({"name": "neural-cleanse", "unlearn_share": 1.2}, "defense.unlearn_share"),
    ({"name": "neural-cleanse", "unlearn_epochs": 0}, "defense.unlearn_epochs"),
    ({"name": "neural-cleanse", "unlearn_lr": -1}, "defense.unlearn_lr"),
    ({"name": "neural-cleanse", "unlearn_momentum": 1}, "defense.unlearn_momentum"),
    ({"name": "neural-cleanse", "unlearn_optimizer": "rmsprop"}, "defense.unlearn_optimizer"),
    ({"name": "neural-cleanse", "unlearn_batch_size": 0}, "defense.unlearn_batch_size"),
    ({"name": "neural-cleanse", "eval_batch_size": 0}, "defense.eval_batch_size"),
])
def test_bad_config_values_are_one_line_errors_naming_the_key(section, key):
    with pytest.raises(PoisonlabError) as err:
        check_defenses([section])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_detectors_need_image_validation_data(backdoored):
    model = build_model("mlp", (4,), 2, {"hidden": []})
    tab = Dataset(torch.rand(10, 4), torch.arange(10) % 2, ["a", "b"])
    for fn, cfg, what in ((strip_defense, StripConfig(), "STRIP"), (neural_cleanse_defense, NeuralCleanseConfig(),
                                                                     "Neural Cleanse")):
        with pytest.raises(PoisonlabError, match=f"{what} works on images") as err:
            fn(model, cfg, tab)
        assert "\n" not in str(err.value)
        with pytest.raises(PoisonlabError, match="set data.val_fraction > 0"):
            fn(model, cfg, None)
    with pytest.raises(PoisonlabError, match="at least 2 validation images"):
        strip_defense(backdoored[0], StripConfig(), backdoored[1].subset(torch.arange(1)))


# -- a digits run ------------------------------------------------------------------------------------
def test_digits_run_writes_both_detector_rows(tmp_path, one_thread):
    from poisonlab.families import get_family

    cell_summary = get_family("backdoor").cell_summary

    cfg = load_config(None, ["train.epochs=3", f"output.dir={tmp_path}", "output.plots=false",
                             "attack={name: badnets, p: 0.1, trigger: {kind: pattern, margin: 0}}",
                             ("defenses=[{name: strip, n_overlays: 8}, {name: neural-cleanse, steps: 15, "
                              "max_images: 64, unlearn_epochs: 1}]")], device="cpu")
    out = run_experiment(cfg)
    d = out.metrics["defenses"]
    assert list(d) == ["strip", "neural-cleanse"]
    s, nc = d["strip"], d["neural-cleanse"]
    assert 0 <= s["clean_rejected_rate"] <= 1 and 0 <= s["triggered_rejected_rate"] <= 1
    assert s["threshold"] > 0 and s["threshold_inputs"] + s["overlay_pool"] == out.metrics["data"]["validation"]
    assert s["attack_success_rate"] <= out.metrics["victim"]["attack_success_rate"]  # a gate only removes answers
    assert s["defense_seconds"] > 0 and nc["defense_seconds"] > 0
    assert len(nc["anomaly_index"]) == 10 and "target_flagged" in nc and "clean_accuracy" in nc
    rows = list(csv.DictReader((out.path / "tables" / "defenses.csv").open()))
    assert [r["defense"] for r in rows] == ["none", "strip", "neural-cleanse"]
    assert float(rows[1]["clean rejected"]) == s["clean_rejected_rate"]  # plain numbers for programs
    assert float(rows[1]["triggered rejected"]) == s["triggered_rejected_rate"]
    assert rows[1]["channels pruned"] == rows[2]["channels pruned"] == rows[2]["clean rejected"] == ""
    md = (out.path / "tables" / "defenses.md").read_text()  # and formatted for people
    assert f"{100 * s['clean_rejected_rate']:.2f}% / {100 * s['triggered_rejected_rate']:.2f}%" in md
    summary = cell_summary(out.metrics, ["strip", "neural-cleanse"])  # what a matrix grid reads
    assert summary["strip"]["attack_success_rate"] == s["attack_success_rate"]
