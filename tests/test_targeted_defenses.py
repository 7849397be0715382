"""Deep k-NN (Peri et al. 2020) and the oracle / random filter controls, by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonlab.data.base import Dataset
from poisonlab.defenses import DEFENSES, DefenseInputs, deep_knn
from poisonlab.defenses.control_filters import (OracleFilterConfig, RandomFilterConfig, oracle_filter_defense,
                                                random_filter_defense)
from poisonlab.errors import PoisonlabError


def test_deep_knn_removes_the_row_outvoted_by_its_neighbours():
    x = np.array([[0.0], [0.1], [0.2], [0.15], [5.0], [5.1], [5.2], [0.05]])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # row 7: label 1 among class-0 rows (a collided poison)
    r = deep_knn(x, y, k=3)
    assert r.remove.tolist() == [False] * 7 + [True]
    # row 7's 3 nearest others are rows 0, 1, 3 (all class 0): share of other labels 1
    assert r.scores[7] == 1.0
    # row 0's nearest others: 7 (0.05), 1 (0.1), 3 (0.15): one of three has another label
    assert r.scores[0] == pytest.approx(1 / 3)
    assert r.details["plurality"][7] == 0


def test_deep_knn_keeps_a_row_whose_label_ties_for_the_plurality():
    x = np.array([[0.0], [1.0], [-1.0], [10.0], [11.0]])
    y = np.array([0, 0, 1, 1, 1])
    r = deep_knn(x, y, k=2)  # row 0's neighbours: rows 1 (label 0) and 2 (label 1): a tie, kept
    assert not r.remove[0]
    assert r.remove[2]  # row 2's neighbours 0 and 1 are both class 0


def test_deep_knn_is_registered_as_a_filter():
    spec = DEFENSES.get("deep-knn")
    assert spec.kind == "filter" and spec.needs == frozenset({"torch-layers", "retrain"})
    with pytest.raises(PoisonlabError, match=r"^defense.k must be in 1\.\.100000 \(neighbours\), got 0$"):
        spec.from_config({"name": "deep-knn", "k": 0})


def _inputs(mask: list[bool] | None, seed: int = 0) -> tuple[DefenseInputs, list]:
    data = Dataset(torch.arange(10.0).reshape(10, 1), torch.tensor([0, 1] * 5), ["a", "b"])
    calls: list = []

    def retrain(ds: Dataset, name: str) -> torch.nn.Module:
        calls.append(ds.x.flatten().tolist())
        return torch.nn.Linear(1, 2)

    poison = torch.tensor(mask) if mask is not None else None
    return DefenseInputs(data, poison, retrain, None, None, model=torch.nn.Linear(1, 2), seed=seed), calls


def test_oracle_filter_removes_exactly_the_poisons():
    ctx, calls = _inputs([False, True, False, False, True, False, False, False, False, False])
    out = oracle_filter_defense(OracleFilterConfig(), ctx)
    assert out.removed.tolist() == ctx.poison_mask.tolist()
    assert calls == [[0.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0]]
    assert out.extra["detection"]["recall"] == 1.0 and out.extra["n_removed"] == 2


def test_random_filter_removes_as_many_rows_as_poisons_from_the_seed():
    mask = [False, True, False, False, True, False, True, False, False, False]
    a, _ = _inputs(mask, seed=3)
    b, _ = _inputs(mask, seed=3)
    c, _ = _inputs(mask, seed=4)
    ra, rb = random_filter_defense(RandomFilterConfig(), a).removed, random_filter_defense(RandomFilterConfig(), b).removed
    assert ra.sum() == 3 and ra.tolist() == rb.tolist()
    draws = {tuple(random_filter_defense(RandomFilterConfig(), _inputs(mask, seed=s)[0]).removed.tolist())
             for s in range(8)}
    assert len(draws) > 4  # at random over seeds
    assert random_filter_defense(RandomFilterConfig(), c).removed.sum() == 3


def test_controls_need_a_poison_mask():
    ctx, _ = _inputs(None)
    with pytest.raises(PoisonlabError, match=r"^defense 'oracle-filter' is a control that reads the attack's poison mask"):
        oracle_filter_defense(OracleFilterConfig(), ctx)
    with pytest.raises(PoisonlabError, match=r"^defense 'random-filter' is a control"):
        random_filter_defense(RandomFilterConfig(), ctx)


def test_targeted_examples_plot_is_written(tmp_path):
    from PIL import Image

    from poisonlab.config import ExperimentConfig, from_dict
    from poisonlab.pipeline.extra_targeted_plot import TargetedPlotStep
    from poisonlab.targeted.plots import plot_targeted_examples

    path = tmp_path / "t.png"
    imgs = torch.rand(3, 1, 8, 8)
    plot_targeted_examples(path, imgs[:2], torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([0, 2]), imgs,
                           (imgs + 0.05).clamp(0, 1), ["a", "b", "c"], "t")
    assert path.stat().st_size > 2000 and Image.open(path).size[0] > 200
    on = from_dict(ExperimentConfig, {"attack": {"name": "random-noise"}})
    off = from_dict(ExperimentConfig, {"attack": {"name": "badnets"}})
    assert TargetedPlotStep.enabled(on) and not TargetedPlotStep.enabled(off)


def test_gradient_attacks_refuse_an_estimator_before_training():
    from sklearn.linear_model import LogisticRegression

    from poisonlab.models.estimators import EstimatorModel
    from poisonlab.targeted import FeatureCollision, GradientMatching, RandomNoise

    est = EstimatorModel(LogisticRegression(), 2)
    for attack in (GradientMatching(), FeatureCollision()):
        with pytest.raises(PoisonlabError, match=rf"^{attack.name} differentiates through the model; EstimatorModel "
                                                 r"is not a torch network with parameters"):
            attack.check_model(est)
    RandomNoise().check_model(est)  # noise needs no gradients


def test_filters_defend_the_main_victim_and_further_victims_get_the_rest(tmp_path, one_thread):
    """With victim.seeds, filters retrain the main victim; a further victim is defended only by
    defenses that act on a trained model alone (here fine-tuning), never refused."""
    from poisonlab.families import load_any_config, run_config

    _, cfg = load_any_config(None, [], device="cpu", data={"name": "digits"}, model={"name": "digits-cnn"},
                             train={"epochs": 2},
                             attack={"name": "feature-collision", "poison_class": 3, "iterations": 5,
                                     "targets": {"n": 2}},
                             victim={"seeds": [5]},
                             defenses=[{"name": "deep-knn"}, {"name": "oracle-filter"}, {"name": "fine-tuning"}],
                             output={"dir": str(tmp_path), "plots": False, "save_weights": False})
    m = run_config(cfg).metrics
    assert sorted(m["defenses"]) == ["deep-knn", "fine-tuning", "oracle-filter"]
    assert m["defenses"]["oracle-filter"]["n_removed"] == m["attack"]["n_poison"] == 2
    assert sorted(m["victim_seed_5"]["defenses"]) == ["fine-tuning"]
