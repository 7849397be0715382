"""Gradient poisoning (Biggio, Nelson & Laskov 2012; Demontis et al. 2019): every learner's
gradient against finite differences of (refit, validation loss), the secml tutorial's toy
case, the white-box logistic ascent, the transfer setting through the pipeline, and the
one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from one_line_errors import one_line

from poisonlab.availability import GradientPoisoning
from poisonlab.availability.base import add_rows, other_labels
from poisonlab.availability.implicit import SmoothLearner, SVMLearner
from poisonlab.data.base import Dataset
from poisonlab.families import load_any_config, run_config
from poisonlab.models import EstimatorModel
from poisonlab.pipeline.context import Reference

CPU = torch.device("cpu")
FD_STEP = 1e-6
FD_BOUND = 1e-5
"""Relative l2 error allowed between a poison's gradient and its central finite differences
(seen: below 3e-7 for every learner; the SVM's alphas are polished in double precision)."""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(rng, n, d, k):
    y = rng.integers(0, k, n)
    return rng.normal(size=(k, d))[y] * 1.5 + rng.normal(size=(n, d)), y


def _tiny(k, seed=0):
    rng = np.random.default_rng(seed)
    x, y = _blobs(rng, 40, 3, k)
    xv, yv = _blobs(rng, 30, 3, k)
    y[-5:] = (y[-5:] + 1) % k  # five flipped rows, the poisons
    return x, y, xv, yv


def _finite_differences(learner, x, y, rows, xv, yv):
    out = np.zeros((len(rows), x.shape[1]))
    for i, r in enumerate(rows):
        for j in range(x.shape[1]):
            loss = []
            for sign in (1, -1):
                moved = x.copy()
                moved[r, j] += sign * FD_STEP
                loss.append(learner.loss(learner.fit(moved, y), xv, yv))
            out[i, j] = (loss[0] - loss[1]) / (2 * FD_STEP)
    return out


def _check_gradient(learner, x, y, rows, xv, yv):
    fit = learner.fit(x, y)
    grad, zero = learner.gradient(fit, x, y, rows, xv, yv)
    fd = _finite_differences(learner, x, y, rows, xv, yv)
    for i, r in enumerate(rows):
        if zero[i]:
            assert not grad[i].any() and np.abs(fd[i]).max() < 1e-9, r
        else:
            assert np.linalg.norm(grad[i] - fd[i]) <= FD_BOUND * np.linalg.norm(fd[i]), (r, grad[i], fd[i])
    return fit, zero


# -- 1. gradients against finite differences -----------------------------------------------
@pytest.mark.parametrize("kernel, gamma", [("linear", None), ("rbf", 0.5)])
def test_svm_gradient_matches_finite_differences(kernel, gamma):
    x, y, xv, yv = _tiny(2)
    learner = SVMLearner(1.0, kernel, gamma, 2)
    _, alpha, _ = learner.fit(x, y)[1][0]
    margin = np.flatnonzero((alpha > 1e-6) & (alpha < 1 - 1e-6))
    error = np.flatnonzero(alpha == 1.0)
    outside = np.flatnonzero(alpha == 0)
    assert len(margin) and len(error) and len(outside)
    # margin vectors (own KKT row), error vectors (alpha = C) and a non-support vector (zero)
    rows = np.array([margin[0], margin[-1], error[0], error[-1], outside[0]])
    _, zero = _check_gradient(learner, x, y, rows, xv, yv)
    assert zero.tolist() == [False, False, False, False, True]


def test_svm_one_vs_rest_gradient_matches_finite_differences():
    x, y, xv, yv = _tiny(3)
    _check_gradient(SVMLearner(1.0, "rbf", 0.5, 3), x, y, np.array([5, 35, 39]), xv, yv)


@pytest.mark.parametrize("kind, k", [("logistic", 2), ("logistic", 3), ("ridge", 2), ("ridge", 3)])
def test_smooth_gradient_matches_finite_differences(kind, k):
    x, y, xv, yv = _tiny(k, seed=1)
    _check_gradient(SmoothLearner(kind, 0.7, k), x, y, np.array([0, 17, 39]), xv, yv)


def test_smooth_fits_are_scikit_learns():
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    x, y, _, _ = _tiny(3, seed=2)
    mine = SmoothLearner("logistic", 0.7, 3)
    proba = torch.softmax(mine.scores(mine.fit(x, y), x), 1).numpy()
    assert np.abs(proba - LogisticRegression(C=0.7, tol=1e-12, max_iter=10_000).fit(x, y).predict_proba(x)).max() < 1e-6
    ridge = SmoothLearner("ridge", 0.7, 3)
    assert np.allclose(ridge.scores(ridge.fit(x, y), x).numpy(), RidgeClassifier(alpha=0.7).fit(x, y).decision_function(x))


def test_white_box_surrogates_are_the_references():
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.svm import SVC, LinearSVC

    from poisonlab.availability.gradient_poisoning import infer_surrogate
    from poisonlab.availability.implicit import make_learner

    x, y, xv, _ = _tiny(2, seed=4)
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    fitted = [EstimatorModel(est, 2).fit_arrays(xs, ys, 2, 0) for est in
              (SVC(C=3.0), SVC(kernel="linear", C=0.5), LinearSVC(C=2.0), LogisticRegression(C=0.3),
               RidgeClassifier(alpha=4.0))]
    specs = [infer_surrogate(m, x) for m in fitted]
    assert [s.describe() for s in specs[1:]] == [
        {"learner": "svm", "C": 0.5, "kernel": "linear"}, {"learner": "svm", "C": 2.0, "kernel": "linear"},
        {"learner": "logistic", "C": 0.3}, {"learner": "ridge", "alpha": 4.0}]
    rbf = make_learner(specs[0], 2, x)  # gamma "scale": 1 / (D var(x)), as scikit-learn
    assert specs[0].gamma is None and rbf.gamma == pytest.approx(fitted[0].estimator._gamma, rel=1e-12)
    for model, spec in zip(fitted, specs):
        if isinstance(model.estimator, LinearSVC):
            continue  # squared hinge, penalised intercept: approximated by the hinge-loss SVC
        learner = make_learner(spec, 2, x)
        mine = learner.scores(learner.fit(x, y), xv)
        theirs = model.estimator.decision_function(xv)
        mine = np.asarray(mine).reshape(-1)  # the references stop at scikit-learn's tolerances (1e-3, 1e-4)
        assert np.abs(mine - theirs).max() < 2e-3 * (1 + np.abs(theirs).max()), type(model.estimator).__name__
        assert ((mine > 0) == (theirs > 0)).mean() >= 0.95


# -- 2. the secml tutorial's toy case --------------------------------------------------------
def _tutorial_split(seed):
    """The split of examples/availability_blobs.py (300 points of two Gaussian blobs, 100 train /
    100 validation / 100 test, disjoint, scaled to [0, 1] on the training rows): one definition."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "availability_blobs.py"
    spec = importlib.util.spec_from_file_location("availability_blobs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.split(seed)


def _svm_test_correct(train, test):
    """Test rows (of 100: accuracy in points) an RBF SVM (gamma 10, C 1) fitted on ``train`` gets right."""
    from sklearn.svm import SVC

    svm = SVC(kernel="rbf", gamma=10, C=1).fit(train.x.double().numpy(), train.y.numpy())
    return int((svm.predict(test.x.double().numpy()) == test.y.numpy()).sum())


@pytest.mark.parametrize("seed", [1, 7])
def test_tutorial_rbf_svm_loses_accuracy(seed):
    train, val, test = _tutorial_split(seed)
    attack = GradientPoisoning(rate=0.2, steps=10, surrogate={"learner": "svm", "kernel": "rbf", "gamma": 10, "C": 1})
    result = attack.poison(train, np.random.default_rng(seed), Reference(None, val, CPU, seed))
    r = attack.report_
    assert r["n_poison"] == 20 and len(result.dataset) == 120 and result.poison_mask[100:].all()
    assert r["box"] == "unit" and r["val_loss_final"] > r["val_loss_initial"] + 0.05
    # the same number of random label-flip poisons: copies of random training rows, other label
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(np.sort(rng.choice(100, size=20, replace=False)))
    flipped = add_rows(train, rows, train.x[rows], other_labels(train.y[rows], 2, rng)).dataset
    clean, flip, poisoned = (_svm_test_correct(d, test) for d in (train, flipped, result.dataset))
    assert clean - poisoned >= 4, (clean, flip, poisoned)  # points of accuracy; the tutorial: 94% -> 88%
    assert clean - flip <= 1 and clean - flip < clean - poisoned, (clean, flip, poisoned)


# -- 3. white-box logistic regression ---------------------------------------------------------
def _separable(n, rng):
    y = np.arange(n) % 2
    x = np.clip(np.where(y[:, None] == 1, 0.7, 0.3) + rng.normal(0, 0.07, size=(n, 2)), 0.12, 0.88)
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y), ["a", "b"])


@pytest.mark.parametrize("mode", ["sequential", "joint"])
def test_white_box_logistic_climbs_inside_the_box(mode):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    train, val = _separable(40, rng), _separable(30, rng)
    ref = EstimatorModel(LogisticRegression(C=2.0), 2).fit_arrays(train.x, train.y, 2, seed=0)
    attack = GradientPoisoning(rate=0.1, steps=8, passes=2, box=[0.1, 0.9], mode=mode, tol=0.0)
    result = attack.poison(train, np.random.default_rng(0), Reference(ref, val, CPU, 0))
    r = attack.report_
    assert r["surrogate"] == {"learner": "logistic", "C": 2.0} and r["box"] == "given"
    curve = np.array(r["val_loss_curve"])
    assert (np.diff(curve) >= 0).all() and curve[-1] > curve[0] + 0.05
    assert curve[0] == r["val_loss_initial"] and curve[-1] == r["val_loss_final"]
    assert len(curve) == 1 + (sum(r["steps_per_point"]) if mode == "sequential" else max(r["steps_per_point"]))
    poisons = result.dataset.x[result.poison_mask].double()
    assert poisons.min() >= 0.1 and poisons.max() <= 0.9  # in float64: the box exactly
    assert r["perturbation_l2_mean"] > 0.05 and r["fits"] > len(curve)
    assert torch.equal(result.dataset.x[:40], train.x)  # the clean rows are untouched


def test_images_are_flattened_and_kept_in_shape(tiny_images):
    val = Dataset(tiny_images.x[:9] + 0.1, tiny_images.y[:9], tiny_images.classes)
    attack = GradientPoisoning(rate=0.2, steps=2, surrogate={"learner": "ridge", "alpha": 0.5})
    result = attack.poison(tiny_images, np.random.default_rng(0), Reference(None, val, CPU, 0))
    assert result.dataset.x.shape == (36, 1, 6, 6) and attack.report_["n_poison"] == 6
    assert attack.report_["val_loss_final"] >= attack.report_["val_loss_initial"]
    assert (result.dataset.y[30:] != tiny_images.y[result.source_index[30:]]).all()  # labels flipped, kept


# -- 4. the transfer setting through the pipeline ---------------------------------------------
def _run(tmp_path, attack, model="random-forest", val_fraction=0.2):
    fam, cfg = load_any_config(None, [], attack=attack, device="cpu", model={"name": model},
                               data={"name": "digits", "classes": [1, 7], "val_fraction": val_fraction},
                               output={"dir": str(tmp_path), "plots": False, "save_weights": False,
                                       "cache_baseline": False})
    assert fam.name == "availability"
    return run_config(cfg)


def test_transfer_from_an_svm_to_a_random_forest(tmp_path):
    attack = {"name": "gradient-poisoning", "rate": 0.03, "steps": 3,
              "surrogate": {"learner": "svm", "kernel": "linear", "C": 1.0}}
    m = _run(tmp_path, attack).metrics
    a = m["attack"]
    assert a["surrogate"] == {"learner": "svm", "C": 1.0, "kernel": "linear"}
    assert a["n_poison"] == round(0.03 * m["data"]["train"]) == len(a["steps_per_point"])
    assert m["data"]["classes"] == 2 and m["data"]["shape"] == [1, 8, 8]
    curve = a["val_loss_curve"]
    assert len(curve) == 1 + sum(a["steps_per_point"]) and all(b >= c for b, c in zip(curve[1:], curve))
    assert a["val_loss_final"] > a["val_loss_initial"]
    assert m["victim"]["clean_accuracy"] <= 1 and "clean_error_increase" in m


# -- 5. one-line errors ---------------------------------------------------------------------
@pytest.mark.parametrize("params, match", [
    ({"rate": 0}, r"^attack.rate must be in \(0, 1\]"),
    ({"rate": 1.5}, r"^attack.rate must be in \(0, 1\]"),
    ({"steps": 0}, r"^attack.steps must be in 1..10000"),
    ({"steps": 2.5}, r"^config key 'attack.steps' must be an integer"),
    ({"passes": 101}, r"^attack.passes must be in 1..100"),
    ({"step_size": 0}, r"^attack.step_size must be in \(0, 10\]"),
    ({"tol": -1}, r"^attack.tol must be in"),
    ({"mode": "batch"}, r"^config key 'attack.mode' must be one of sequential, joint"),
    ({"box": "unit"}, r"^attack.box must be auto or \[low, high\]"),
    ({"box": [1, 0]}, r"^attack.box must be auto or \[low, high\] with low < high"),
    ({"box": [0, 1, 2]}, r"^attack.box must be auto or \[low, high\]"),
    ({"surrogate": {"learner": "tree"}}, r"^attack.surrogate.learner must be svm, logistic or ridge"),
    ({"surrogate": {"C": 1}}, r"^attack.surrogate.learner must be svm, logistic or ridge, got None"),
    ({"surrogate": {"learner": "svm", "C": 0}}, r"^attack.surrogate.C must be in \(0, "),
    ({"surrogate": {"learner": "ridge", "alpha": -1}}, r"^attack.surrogate.alpha must be in \(0, "),
    ({"surrogate": {"learner": "svm", "kernel": "rbf", "gamma": 0}}, r"^attack.surrogate.gamma must be in \(0, "),
    ({"surrogate": {"learner": "svm", "gamma": 1}}, r"^attack.surrogate.gamma applies to kernel: rbf only"),
    ({"surrogate": {"learner": "svm", "kernel": "poly"}}, r"^attack.surrogate.kernel must be linear or rbf"),
    ({"surrogate": {"learner": "logistic", "alpha": 1}}, r"^attack.surrogate.alpha does not apply to learner logistic"),
    ({"surrogate": "svm"}, r"must be a mapping"),
])
def test_config_errors(params, match):
    one_line(match, GradientPoisoning, **params)


def test_errors_at_crafting_time():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    train, val = _separable(20, rng), _separable(10, rng)
    attack = GradientPoisoning(rate=0.1)
    one_line(r"^gradient poisoning climbs the attacker's loss on clean validation rows; set data.val_fraction > 0$",
             attack.poison, train, rng, Reference(None, None, CPU, 0))
    forest = EstimatorModel(RandomForestClassifier(n_estimators=2), 2, "random-forest")
    one_line(r"^gradient poisoning needs a surrogate learner: the model 'random-forest' is no SVM, logistic or ridge "
             r"regression; set attack.surrogate", attack.poison, train, rng, Reference(forest, val, CPU, 0))
    one_line(r"the model 'Linear' is no SVM.*set attack.surrogate", attack.poison, train, rng,
             Reference(torch.nn.Linear(2, 2), val, CPU, 0))
    poly = EstimatorModel(SVC(kernel="poly"), 2).fit_arrays(train.x, train.y, 2, 0)
    one_line(r"^gradient poisoning differentiates linear and rbf kernels, the reference SVC has kernel 'poly'",
             attack.poison, train, rng, Reference(poly, val, CPU, 0))


def test_no_validation_rows_through_the_pipeline(tmp_path):
    one_line(r"set data.val_fraction > 0$", _run, tmp_path,
             {"name": "gradient-poisoning", "rate": 0.02, "steps": 1, "surrogate": {"learner": "logistic"}},
             model="logistic-regression", val_fraction=0)
