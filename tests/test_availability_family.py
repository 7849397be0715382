"""The availability family on the step pipeline: its measure by hand, the base's row helpers,
random label flips end to end, and its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from one_line_errors import one_line
from poisonlab.availability import LabelFlip
from poisonlab.availability.base import add_rows, other_labels, relabel_rows
from poisonlab.data.base import Dataset
from poisonlab.families import get_family, load_any_config, run_config
from poisonlab.measures import MEASURES


class Fixed(nn.Module):
    """Predicts the class stored in the input's first feature."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float() + 0 * self.dummy


def test_measure_by_hand():
    test = Dataset(torch.tensor([[0.], [1.], [2.], [2.], [1.], [0.]]), torch.tensor([0, 1, 2, 0, 0, 0]), ["a", "b", "c"])
    out, preds = MEASURES.get("availability")().measure(Fixed(), test, None, 4, torch.device("cpu"), "m")
    # predictions 0 1 2 2 1 0 against 0 1 2 0 0 0: rows 3 and 4 wrong
    assert out["clean_error"] == pytest.approx(2 / 6) and out["clean_accuracy"] == pytest.approx(4 / 6)
    assert out["per_class_clean_error"] == pytest.approx([2 / 4, 0.0, 0.0])
    assert out["confusion_clean"][0] == [2, 1, 1] and preds["clean"].tolist() == [0, 1, 2, 2, 1, 0]


def test_row_helpers_exact():
    train = Dataset(torch.arange(8.).reshape(4, 2), torch.tensor([0, 1, 2, 1]), ["a", "b", "c"])
    r = relabel_rows(train, torch.tensor([1, 3]), torch.tensor([2, 0]))
    assert r.dataset.y.tolist() == [0, 2, 2, 0] and r.poison_mask.tolist() == [False, True, False, True]
    assert torch.equal(r.dataset.x, train.x) and train.y.tolist() == [0, 1, 2, 1]  # the clean set is untouched
    a = add_rows(train, torch.tensor([2]), torch.tensor([[9., 9.]]), torch.tensor([0]))
    assert a.dataset.y.tolist() == [0, 1, 2, 1, 0] and a.poison_mask.tolist() == [False] * 4 + [True]
    assert a.source_index.tolist() == [0, 1, 2, 3, 2] and a.dataset.x[-1].tolist() == [9., 9.]
    rng = np.random.default_rng(0)
    y = torch.tensor([0, 1, 2] * 2000)
    flipped = other_labels(y, 3, rng)
    assert bool((flipped != y).all())
    for c in range(3):  # the two other classes about equally often
        share = float((flipped[y == c] == (c + 1) % 3).float().mean())
        assert 0.45 < share < 0.55
    assert other_labels(torch.tensor([0, 1, 1]), 2, rng).tolist() == [1, 0, 0]


def test_random_label_flips_end_to_end(tmp_path):
    fam, cfg = load_any_config(None, [], device="cpu", attack={"name": "label-flip", "rate": 0.3},
                               model={"name": "logistic-regression"},
                               output={"dir": str(tmp_path), "plots": False})
    assert fam.name == "availability"
    m = run_config(cfg).metrics
    n = m["data"]["train"]
    assert m["attack"]["n_poison"] == m["attack"]["n_flipped"] == round(0.3 * n)
    assert m["attack"]["train_size_poisoned"] == n  # flipped in place, no rows added
    assert m["clean_error_increase"] == m["victim"]["clean_error"] - m["baseline"]["clean_error"]
    assert m["victim"]["clean_error"] > m["baseline"]["clean_error"] + 0.01  # 30% flipped labels hurt
    assert m["peak_memory_mb"]["rss"] > 0 and m["time"]["total_seconds"] > 0


def test_errors():
    one_line(r"^attack.rate must be in \(0, 1\], got 0.0$", LabelFlip, rate=0)
    one_line(r"^attack.rate must be in \(0, 1\], got 1.5$", LabelFlip, rate=1.5)
    one_line(r"^config key 'attack.strategy' must be one of random.*got 'worst'$", LabelFlip, rate=0.1, strategy="worst")
    tiny = Dataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]), ["a", "b"])
    one_line(r"^attack.rate 0.1 gives 0 poisons of 3 training rows; raise it$", LabelFlip(rate=0.1).check, tiny)
    one_line(r"^an availability attack needs at least two classes$", LabelFlip(rate=0.5).check,
             Dataset(torch.zeros(3, 2), torch.tensor([0, 0, 0]), ["a"]))
    fam = get_family("availability")
    from poisonlab.attacks import build_attack

    one_line(r"^attack 'badnets' belongs to family 'backdoor', not 'availability'$", fam.check_attack,
             build_attack({"name": "badnets", "p": 0.1}))


def test_grid_writes_error_against_rate(tmp_path):
    import csv

    from poisonlab.matrix import grid_from_dict, run_matrix

    grid = grid_from_dict({
        "name": "flips", "kind": "availability",
        "base": {"device": "cpu", "data": {"name": "digits"}, "model": {"name": "logistic-regression"}},
        "attacks": {"flip-10": {"name": "label-flip", "rate": 0.1}, "flip-40": {"name": "label-flip", "rate": 0.4}},
        "seeds": [0, 1], "output": {"dir": str(tmp_path), "plots": True},
    })
    out = run_matrix(grid)
    cells = out.metrics["cells"]
    rows = list(csv.DictReader(open(out.path / "tables" / "error_curves.csv")))
    assert [(r["curve"], r["defense"], float(r["rate"]), int(r["seeds"])) for r in rows] == [
        ("label-flip", "none", 0.0, 2), ("label-flip", "none", 0.1, 2), ("label-flip", "none", 0.4, 2)]
    for r, arm in zip(rows[1:], ("flip-10", "flip-40")):  # the mean over the arm's two seeds, by hand
        errs = [c["summary"]["none"]["clean_error"] for c in cells if c["attack"] == arm]
        assert float(r["test_error_mean"]) == pytest.approx(sum(errs) / 2, abs=1e-9)
    clean = {c["seed"]: 1 - c["baseline_clean_accuracy"] for c in cells}
    assert float(rows[0]["test_error_mean"]) == pytest.approx(sum(clean.values()) / 2, abs=1e-9)
    assert float(rows[2]["test_error_mean"]) > float(rows[0]["test_error_mean"])  # 40% flips hurt
    assert (out.path / "plots" / "error_curves.png").stat().st_size > 5000


def test_attacker_loss_plot_only_for_an_optimised_attack(tmp_path):
    def run(attack):
        _, cfg = load_any_config(None, [], device="cpu", attack=attack, model={"name": "logistic-regression"},
                                 data={"name": "digits", "classes": [1, 7]},
                                 output={"dir": str(tmp_path), "plots": True, "save_weights": False})
        return run_config(cfg).path

    optimised = run({"name": "gradient-poisoning", "rate": 0.03, "steps": 2})
    assert (optimised / "plots" / "attacker_loss.png").stat().st_size > 3000
    flipped = run({"name": "label-flip", "rate": 0.1})
    assert (flipped / "plots").is_dir() and not (flipped / "plots" / "attacker_loss.png").exists()


def test_defenses_apply_to_availability_attacks(tmp_path):
    _, cfg = load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [3, 8]},
                             model={"name": "mlp", "options": {"hidden": []}},
                             train={"epochs": 10, "optimizer": "adam", "lr": 0.01},
                             attack={"name": "label-flip", "rate": 0.2},
                             defenses=[{"name": "trim"}, {"name": "sever"}, {"name": "oracle-filter"},
                                       {"name": "random-filter"}],
                             output={"dir": str(tmp_path), "plots": False, "save_weights": False})
    m = run_config(cfg).metrics
    d = m["defenses"]
    n_poison = m["attack"]["n_poison"]
    assert set(d) == {"trim", "sever", "oracle-filter", "random-filter"}
    assert d["oracle-filter"]["detection"]["recall"] == 1.0 and d["oracle-filter"]["n_removed"] == n_poison
    assert d["random-filter"]["n_removed"] == n_poison
    for name in d:  # no class is the attack's target: no per-target-class removal is reported
        assert "target_class_clean_removed" not in d[name] and 0 <= d[name]["clean_error"] <= 1
