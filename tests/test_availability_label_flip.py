"""Label flipping as an availability attack: the random, greedy and ALFA strategies (Biggio,
Nelson & Laskov 2011; Xiao, Xiao & Eckert 2012): the flip count and labels, reproducibility,
greedy and ALFA beating random flips on retrained learners, the greedy choice on a hand-made
toy, ALFA's LP, one-line errors and a run through the pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from one_line_errors import one_line
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from poisonlab import families
from poisonlab.availability import LabelFlip
from poisonlab.availability import adversarial_flip as af
from poisonlab.data.base import Dataset
from poisonlab.models import EstimatorModel, build_model
from poisonlab.pipeline.context import Reference

CPU = torch.device("cpu")
KNN1 = {"name": "sklearn.neighbors:KNeighborsClassifier", "options": {"n_neighbors": 1}}


def blobs(n: int, seed: int, classes: int = 2, d: int = 5, sep: float = 1.0) -> Dataset:
    """``n`` Gaussian rows in ``d`` dimensions, class means ``sep`` apart along the first axes."""
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    x = r.normal(size=(n, d))
    if classes == 2:
        x[:, 0] += (2 * y - 1) * sep
    else:
        x[np.arange(n), y % d] += 2 * sep
    return Dataset(torch.from_numpy(x).float(), torch.from_numpy(y), [f"c{i}" for i in range(classes)])


def reference(train: Dataset, val: Dataset | None, estimator=None, seed: int = 0) -> Reference:
    model = EstimatorModel(estimator if estimator is not None else LinearSVC(), train.num_classes, "linear-svm")
    model.fit_arrays(train.x, train.y, train.num_classes, seed)
    return Reference(model, val, CPU, seed)


def retrained_error(data: Dataset, test: Dataset, estimator=None) -> float:
    """Test error of a fresh learner (a linear SVM unless named) fitted on ``data``."""
    est = af.fit(estimator if estimator is not None else LinearSVC(), data.x.double().numpy(), data.y.numpy(), 0)
    return float(np.mean(est.predict(test.x.double().numpy()) != test.y.numpy()))


# -- what every strategy delivers --------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "classes"), [("random", 2), ("random", 3), ("greedy", 2), ("greedy", 3),
                                                  ("alfa", 2)])
def test_exact_count_labels_only_and_report(strategy: str, classes: int) -> None:
    train, val = blobs(60, 1, classes), blobs(20, 2, classes)
    attack = LabelFlip(rate=0.15, strategy=strategy, candidates=5)
    out = attack.poison(train, np.random.default_rng(0), reference(train, val))
    mask = out.poison_mask
    assert int(mask.sum()) == round(0.15 * 60) == 9
    assert torch.equal(out.dataset.x, train.x)  # inputs unchanged
    assert (out.dataset.y[mask] != train.y[mask]).all()
    assert torch.equal(out.dataset.y[~mask], train.y[~mask])
    assert out.dataset.y.max() < classes
    rep = attack.describe()
    assert rep["n_flipped"] == 9 and rep["strategy"] == strategy and rep["seconds"] >= 0
    assert rep["surrogate"] == "linear-svm" and rep["objective_rows"] == "validation" and rep["loss"] == "hinge"
    if strategy == "random":  # the fitted reference's loss only: no refit
        assert rep["fits"] == 0 and rep["val_loss_before"] >= 0 and "val_loss_after" not in rep
    else:
        assert rep["fits"] >= 2 and rep["val_loss_after"] >= 0 and rep["val_loss_before"] >= 0
    if strategy == "greedy":
        assert rep["val_loss_after"] > rep["val_loss_before"] and rep["objective"] == "hinge"


def test_random_with_a_surrogate_reports_before_and_after() -> None:
    train, val = blobs(60, 1), blobs(20, 2)
    attack = LabelFlip(rate=0.3, surrogate={"name": "logistic-regression"})
    plain = LabelFlip(rate=0.3).poison(train, np.random.default_rng(0), reference(train, val))
    out = attack.poison(train, np.random.default_rng(0), reference(train, val))
    assert torch.equal(out.dataset.y, plain.dataset.y)  # the surrogate never changes the draw
    rep = attack.describe()
    assert rep["fits"] == 2 and rep["loss"] == "log-loss" and rep["surrogate"] == "logistic-regression"
    assert rep["val_loss_after"] > rep["val_loss_before"] > 0


def test_random_reproducible_with_a_seed() -> None:
    train = blobs(80, 3, 3)
    attack = LabelFlip(rate=0.25)
    a, b, c = (attack.poison(train, np.random.default_rng(s)) for s in (7, 7, 8))
    assert torch.equal(a.poison_mask, b.poison_mask) and torch.equal(a.dataset.y, b.dataset.y)
    assert not torch.equal(a.dataset.y, c.dataset.y)
    assert attack.describe()["surrogate"] is None  # no reference: no surrogate loss to report


def test_greedy_reproducible_and_batched() -> None:
    train, val = blobs(60, 4), blobs(20, 5)
    ref = reference(train, val)
    runs = [LabelFlip(rate=0.2, strategy="greedy", candidates=6).poison(train, np.random.default_rng(3), ref)
            for _ in range(2)]
    assert torch.equal(runs[0].dataset.y, runs[1].dataset.y)
    batched = LabelFlip(rate=0.2, strategy="greedy", candidates=6, rounds_batch=4)
    out = batched.poison(train, np.random.default_rng(3), ref)
    rep = batched.describe()
    assert int(out.poison_mask.sum()) == 12 and rep["rounds"] == 3 and rep["fits"] == 1 + 3 * 6 + 3


# -- the greedy choice -------------------------------------------------------------------------
def test_greedy_choice_on_a_hand_made_toy() -> None:
    """1-D, 1-nearest-neighbour surrogate: flipping a training row flips the prediction of every
    validation row it is nearest to. Row 3 (x=3) is nearest to three validation rows, row 0 to
    two, row 12 to one: by hand, the two most damaging flips are rows 3 and 0, both to class 1."""
    train = Dataset(torch.tensor([[0.], [1.], [2.], [3.], [10.], [11.], [12.], [13.]]),
                    torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), ["a", "b"])
    val = Dataset(torch.tensor([[2.9], [3.1], [3.3], [0.2], [0.1], [12.1]]), torch.tensor([0, 0, 0, 0, 0, 1]),
                  ["a", "b"])
    for objective in ("error", "loss"):
        attack = LabelFlip(rate=0.25, strategy="greedy", candidates=8, objective=objective, surrogate=KNN1)
        out = attack.poison(train, np.random.default_rng(0), Reference(None, val, CPU, 0))
        assert out.poison_mask.nonzero().flatten().tolist() == [0, 3]
        assert out.dataset.y.tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
        rep = attack.describe()
        assert rep["val_error_before"] == 0 and rep["val_error_after"] == pytest.approx(5 / 6)
        assert rep["fits"] == 1 + 8 + 7 and rep["loss"] == "log-loss"


def test_multiclass_flip_goes_to_the_runner_up() -> None:
    """Three classes on a line at 0, 5 and 10: the runner-up of both end points is the middle class."""
    x = np.array([[0.], [0.5], [5.], [5.5], [10.], [10.5]])
    est = af.fit(LogisticRegression(max_iter=1000), x, np.array([0, 0, 1, 1, 2, 2]), 0)
    assert af.flip_labels(est, np.array([[0.], [10.]]), np.array([0, 2]), 3).tolist() == [1, 1]
    assert af.flip_labels(est, x[:2], np.array([0, 1]), 2).tolist() == [1, 0]  # binary: the other class


def test_greedy_beats_random_flips() -> None:
    """Linear SVM, 15% flips, three data seeds: greedy raises the retrained SVM's test error more
    than random flips on every seed, by at least 5 points on average (about 12 observed)."""
    gaps = []
    for seed in range(3):
        train, val, test = blobs(200, 10 * seed), blobs(50, 10 * seed + 1), blobs(600, 10 * seed + 2)
        ref = reference(train, val, seed=seed)
        errors = {}
        for strategy in ("random", "greedy"):
            out = LabelFlip(rate=0.15, strategy=strategy).poison(train, np.random.default_rng(seed), ref)
            errors[strategy] = retrained_error(out.dataset, test)
        gaps.append(errors["greedy"] - errors["random"])
    assert min(gaps) > 0 and np.mean(gaps) > 0.05, gaps


# -- ALFA ----------------------------------------------------------------------------------
def test_alfa_lp_matches_its_closed_form() -> None:
    """With ``q_keep + q_flip = 1`` and one budget row, the LP flips the ``budget`` rows of most
    negative net cost (only those below zero)."""
    r = np.random.default_rng(0)
    keep, flip = r.normal(size=50), r.normal(size=50)
    for budget in (5, 40):
        q = af.alfa_lp(keep, flip, budget)
        net = flip - keep
        want = np.zeros(50)
        want[[i for i in np.argsort(net)[:budget] if net[i] < 0]] = 1
        np.testing.assert_allclose(q, want, atol=1e-7)


def test_alfa_beats_random_flips() -> None:
    """ALFA against a linear SVM, 15% flips, three data seeds: the retrained SVM's test error is
    higher than with random flips on every seed, by at least 5 points on average (about 15 observed)."""
    gaps = []
    for seed in range(3):
        train, val, test = blobs(200, 10 * seed), blobs(50, 10 * seed + 1), blobs(600, 10 * seed + 2)
        ref = reference(train, val, seed=seed)
        errors = {}
        for strategy in ("random", "alfa"):
            attack = LabelFlip(rate=0.15, strategy=strategy)
            out = attack.poison(train, np.random.default_rng(seed), ref)
            errors[strategy] = retrained_error(out.dataset, test)
        assert attack.describe()["iterations"] >= 1
        gaps.append(errors["alfa"] - errors["random"])
    assert min(gaps) > 0 and np.mean(gaps) > 0.05, gaps


def test_alfa_refuses_multiclass_and_non_svms() -> None:
    train = blobs(30, 0, 3)
    one_line("alfa is for binary tasks", LabelFlip(strategy="alfa").poison, train, np.random.default_rng(0),
             reference(train, None))
    binary = blobs(30, 0)
    one_line("attacks an SVM", LabelFlip(strategy="alfa").poison, binary, np.random.default_rng(0),
             reference(binary, None, LogisticRegression()))
    one_line("attacks an SVM", LabelFlip(strategy="alfa").check_model, build_model("random-forest", (5,), 2))
    one_line("attacks an SVM", LabelFlip(strategy="alfa", surrogate={"name": "logistic-regression"}).check_model,
             build_model("kernel-svm", (5,), 2))
    one_line("model 'linear-svm' has no option 'depth'",
             LabelFlip(strategy="greedy", surrogate={"name": "linear-svm", "options": {"depth": 2}}).check_model,
             build_model("mlp", (5,), 2))
    LabelFlip(strategy="alfa", surrogate={"name": "linear-svm"}).check_model(build_model("mlp", (5,), 2))
    attack = LabelFlip(strategy="alfa", surrogate={"name": "kernel-svm"})  # an SVM surrogate for any victim
    out = attack.poison(binary, np.random.default_rng(0), reference(binary, None, LogisticRegression()))
    assert int(out.poison_mask.sum()) == 3 and attack.describe()["objective_rows"] == "training"


# -- errors and surrogates -----------------------------------------------------------------
@pytest.mark.parametrize(("params", "match"), [
    ({"strategy": "gready"}, "attack.strategy.*random, greedy, alfa.*did you mean 'greedy'"),
    ({"candidates": 0}, r"attack.candidates must be an integer in 1..10000"),
    ({"candidates": 10_001}, r"attack.candidates must be an integer in 1..10000"),
    ({"candidates": 2.5}, "attack.candidates' must be an integer"),
    ({"candidates": 4, "rounds_batch": 5}, r"attack.rounds_batch must be an integer in 1..4"),
    ({"iterations": 0}, r"attack.iterations must be an integer in 1..1000"),
    ({"objective": "accuracy"}, "attack.objective"),
    ({"rate": 1.5}, r"attack.rate must be in \(0, 1\]"),
    ({"rate": 0}, r"attack.rate must be in \(0, 1\]"),
    ({"surrogate": "logistic-regression"}, "attack.surrogate' must be a mapping"),
    ({"surrogate": {"name": "linear-svm", "extra": 1}}, "attack.surrogate must be null or a mapping"),
    ({"surrogate": {"name": "mlp"}}, "is a torch network.*logistic-regression"),
    ({"surrogate": {"name": "no-such-model"}}, "no-such-model"),
])
def test_one_line_errors(params: dict, match: str) -> None:
    one_line(match, LabelFlip, **params)


def test_torch_reference_needs_an_estimator_surrogate() -> None:
    train, val = blobs(40, 0), blobs(10, 1)
    mlp = build_model("mlp", (5,), 2)
    one_line("set attack.surrogate to an estimator, e.g. {name: logistic-regression}",
             LabelFlip(strategy="greedy").poison, train, np.random.default_rng(0), Reference(mlp, val, CPU, 0))
    one_line("set attack.surrogate", LabelFlip(strategy="greedy").check_model, mlp)
    one_line("set attack.surrogate", LabelFlip(strategy="greedy").poison, train, np.random.default_rng(0), None)
    attack = LabelFlip(strategy="greedy", candidates=4, surrogate={"name": "logistic-regression"})
    out = attack.poison(train, np.random.default_rng(0), Reference(mlp, val, CPU, 0))
    assert int(out.poison_mask.sum()) == 4 and attack.describe()["loss"] == "log-loss"
    LabelFlip().check_model(mlp)  # random flips need no surrogate


# -- through the pipeline ------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["greedy", "alfa"])
def test_pipeline_run_raises_the_victims_error(tmp_path, strategy: str) -> None:
    """digits 3 vs 8, linear SVM, 10% flips: the clean reference errs on 0 of 89 test rows, the
    victim on 12 (greedy) or 13 (alfa); random flips at this rate reach 8."""
    _, cfg = families.load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [3, 8]},
                                      model={"name": "linear-svm"},
                                      attack={"name": "label-flip", "rate": 0.1, "strategy": strategy},
                                      output={"dir": str(tmp_path), "plots": False})
    metrics = families.run_config(cfg).metrics
    assert metrics["family"] == "availability"
    assert metrics["attack"]["strategy"] == strategy and metrics["attack"]["n_flipped"] == metrics["attack"]["n_poison"]
    assert metrics["victim"]["clean_error"] > metrics["baseline"]["clean_error"] + 0.03


def test_pipeline_refuses_a_torch_victim_without_surrogate_before_training(tmp_path) -> None:
    _, cfg = families.load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [3, 8]},
                                      model={"name": "mlp"}, attack={"name": "label-flip", "strategy": "greedy"},
                                      output={"dir": str(tmp_path), "plots": False})
    one_line("attack.surrogate", families.run_config, cfg)
