"""Regression poisoning (Jagielski et al., "Manipulating Machine Learning", IEEE S&P 2018):
the CSV reader's ``task: regression``, the regressors, the test-MSE measure, OptP's implicit
gradients, StatP, random response flips, TRIM on squared residuals, the one-line refusals."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from one_line_errors import one_line
from threadpoolctl import threadpool_limits

from poisonlab.availability import label_flip  # noqa: F401  (registers the attacks)
from poisonlab.availability.curves import error_curves
from poisonlab.availability.optp import OptP
from poisonlab.availability.regression import LinearLearner, RegressionSpec
from poisonlab.availability.statp import StatP
from poisonlab.data import load_data
from poisonlab.data.base import Dataset
from poisonlab.families import get_family, load_any_config, run_config
from poisonlab.models import build_model
from poisonlab.pipeline.context import Reference

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)


def _linear(rng: np.random.Generator, n: int, d: int, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Features in [0, 1] (the last one binary) and a noisy linear response scaled into [0, 1]."""
    x = rng.random((n, d))
    x[:, -1] = (x[:, -1] > 0.5).astype(float)
    y = x @ np.linspace(-1.0, 1.5, d)
    y = (y - y.min()) / (y.max() - y.min())
    return x, np.clip(y + noise * rng.normal(size=n), 0, 1)


def _write_csv(path, x: np.ndarray, y: np.ndarray) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")  # CRLF, as the paper's files
        w.writerow(["response", *(f"f{j}" for j in range(x.shape[1]))])
        for xi, yi in zip(x, y):
            w.writerow([repr(float(yi)), *(repr(float(v)) for v in xi)])
    return str(path)


def _data(path: str, **extra) -> dict:
    return {"name": "csv", "path": path, "val_fraction": 0.25,
            "options": {"label": "response", "task": "regression", "standardize": False}, **extra}


# -- OptP's gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [RegressionSpec("ols"), RegressionSpec("ridge", 2.0), RegressionSpec("lasso", 0.01),
                                  RegressionSpec("elastic-net", 0.02, 0.5)], ids=lambda s: s.learner)
def test_optp_gradient_matches_finite_differences(spec):
    rng = np.random.default_rng(1)
    x, y = _linear(rng, 50, 5)
    xv, yv = _linear(rng, 30, 5)
    z = np.c_[x, y]
    z[-3:, -1] = 1 - z[-3:, -1]  # three flipped rows: the poisons
    learner = LinearLearner(spec, optimize_response=True)
    theta = learner.fit(z)
    if spec.learner in ("lasso", "elastic-net"):
        assert 0 < (theta[:-1] != 0).sum() < 5  # a proper active set: some weights are 0
    rows = np.array([47, 48, 49])
    grad, zero = learner.gradient(theta, z, None, rows, xv, yv)
    assert grad.shape == (3, 6) and not zero.any()
    fd = np.zeros_like(grad)
    for a, r in enumerate(rows):
        for j in range(6):
            up, down = z.copy(), z.copy()
            up[r, j] += 1e-6
            down[r, j] -= 1e-6
            fd[a, j] = (learner.loss(learner.fit(up), xv, yv) - learner.loss(learner.fit(down), xv, yv)) / 2e-6
    assert np.linalg.norm(grad - fd) <= 1e-5 * np.linalg.norm(fd)
    assert not LinearLearner(spec).gradient(theta, z, None, rows, xv, yv)[0][:, -1].any()  # responses held


def test_learners_fit_scikit_learns_objectives():
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge

    x, y = _linear(np.random.default_rng(2), 80, 4)
    for spec, est in ((RegressionSpec("ols"), LinearRegression()), (RegressionSpec("ridge", 3.0), Ridge(alpha=3.0)),
                      (RegressionSpec("lasso", 0.01), Lasso(alpha=0.01)),
                      (RegressionSpec("elastic-net", 0.01, 0.3), ElasticNet(alpha=0.01, l1_ratio=0.3))):
        theta = LinearLearner(spec).fit(np.c_[x, y])
        assert np.abs(LinearLearner.predict(theta, x) - est.fit(x, y).predict(x)).max() < 1e-5, spec


# -- StatP and random flips ---------------------------------------------------------------------
def _train_set(seed: int = 0, n: int = 200) -> tuple[Dataset, Reference]:
    x, y = _linear(np.random.default_rng(seed), n, 6)
    train = Dataset(torch.from_numpy(x).float(), torch.from_numpy(y).float(), [])
    model = build_model("ridge-regression", (6,), 0, {"alpha": 0.1}).fit_arrays(train.x, train.y, 0, seed=0)
    return train, Reference(model, None, CPU, 0)


def test_statp_poisons_lie_in_the_box_with_extreme_responses():
    train, ref = _train_set()
    attack = StatP(rate=0.15)
    result = attack.poison(train, np.random.default_rng(0), ref)
    n = len(train)
    assert attack.poison_count(train) == 30 and len(result.dataset) == n + 30
    assert result.poison_mask.sum() == 30 and not result.poison_mask[:n].any()
    xp, yp = result.dataset.x[n:], result.dataset.y[n:]
    assert torch.equal(result.dataset.x[:n], train.x) and torch.equal(result.dataset.y[:n], train.y)
    assert xp.min() >= 0 and xp.max() <= 1  # the [0, 1] box
    assert set(xp[:, -1].tolist()) <= {0.0, 1.0}  # the binary feature stays binary
    assert 0 < xp[:, 0].unique().numel()  # continuous features take other values
    assert set(yp.tolist()) <= {0.0, 1.0}  # the far end of the response range ...
    pred = ref.model(xp)[:, 0]
    assert torch.equal(yp, (pred <= 0.5).float())  # ... opposite to the clean model's prediction
    assert attack.describe()["binary_features"] == 1


def test_random_flips_invert_responses():
    train, _ = _train_set()
    result = build_attack_flip().poison(train, np.random.default_rng(3), None)
    changed = result.poison_mask
    assert changed.sum() == round(0.1 * len(train)) and len(result.dataset) == len(train)
    assert torch.allclose(result.dataset.y[changed], 1 - train.y[changed])
    assert torch.equal(result.dataset.y[~changed], train.y[~changed]) and result.dataset.is_regression


def build_attack_flip():
    from poisonlab.attacks import build_attack

    return build_attack({"name": "label-flip", "rate": 0.1})


# -- the data -----------------------------------------------------------------------------------
def test_csv_reader_keeps_float_responses(tmp_path):
    x, y = _linear(np.random.default_rng(4), 50, 3)
    path = _write_csv(tmp_path / "t.csv", x, y)
    split = load_data(_data(path))
    assert split.train.is_regression and split.train.num_classes == 0 and split.train.y.dtype == torch.float32
    assert len(split.train) == 40 and len(split.test) == 10  # a random 20% test split
    both = torch.cat([split.train.y, split.test.y]).sort().values
    assert torch.allclose(both, torch.from_numpy(np.sort(y)).float())
    assert torch.allclose(split.train.x.min(), torch.tensor(float(x.min())), atol=0.05)  # not standardised
    standard = load_data({**_data(path), "options": {"label": "response", "task": "regression"}})
    assert abs(float(standard.train.x[:, 0].mean())) < 1e-5  # standardize: true (the default)
    assert not load_data({**_data(path), "options": {"label": "f2"}}).train.is_regression  # binary f2: classes
    one_line(r"data.options.task must be classification or regression, got 'ranking'$", load_data,
             {**_data(path), "options": {"label": "response", "task": "ranking"}})
    bad = tmp_path / "bad.csv"
    bad.write_text("response,f0\r\n0.5,1\r\nhigh,2\r\n")
    one_line(r"line 3: the response 'response' is 'high', not a finite number \(task: regression\)$", load_data,
             {**_data(str(bad))})


# -- the pipeline -------------------------------------------------------------------------------
def _run(tmp_path, path: str, attack: dict, model: str = "ridge-regression", defenses=(), **extra) -> dict:
    _, cfg = load_any_config(None, [], device="cpu", data=_data(path, **extra.pop("data", {})),
                             model={"name": model, "options": {"alpha": 0.1} if model == "ridge-regression" else {}},
                             attack=attack, defenses=list(defenses),
                             output={"dir": str(tmp_path / "runs"), "plots": False, "save_weights": False}, **extra)
    return run_config(cfg).metrics


def test_optp_beats_random_flips_and_trim_restores_the_mse(tmp_path):
    x, y = _linear(np.random.default_rng(5), 400, 6)
    path = _write_csv(tmp_path / "lin.csv", x, y)
    trim = [{"name": "trim", "epsilon": 0.15}]
    optp = _run(tmp_path, path, {"name": "optp", "rate": 0.12, "steps": 10}, defenses=trim)
    flip = _run(tmp_path, path, {"name": "label-flip", "rate": 0.12})
    statp = _run(tmp_path, path, {"name": "statp", "rate": 0.12})
    clean = optp["baseline"]["test_mse"]
    assert flip["baseline"]["test_mse"] == clean == statp["baseline"]["test_mse"]
    assert optp["data"]["task"] == "regression" and optp["data"]["classes"] == 0
    a = optp["attack"]
    assert a["n_poison"] == round(0.12 * optp["data"]["train"]) and a["surrogate"] == {"learner": "ridge", "alpha": 0.1}
    assert a["val_mse_final"] > 2 * a["val_mse_initial"] > 2 * a["val_mse_clean"]
    assert all(b >= c for b, c in zip(a["val_loss_curve"][1:], a["val_loss_curve"]))  # the loss never falls
    # seen (seed 5): clean 0.0011, random flips 0.0045, StatP 0.0082, OptP 0.0176, OptP + TRIM 0.0011
    assert optp["victim"]["test_mse"] > 2 * flip["victim"]["test_mse"] > 2 * 2 * clean
    assert statp["victim"]["test_mse"] > 2 * clean
    assert optp["test_mse_ratio"] == pytest.approx(optp["victim"]["test_mse"] / clean)
    assert optp["test_mse_increase"] == pytest.approx(optp["victim"]["test_mse"] - clean)
    t = optp["defenses"]["trim"]
    assert t["test_mse"] < 1.25 * clean and t["detection"]["recall"] > 0.9  # TRIM: near-clean MSE again
    assert t["test_mse_change"] == pytest.approx(t["test_mse"] - optp["victim"]["test_mse"])
    summary = get_family("availability").cell_summary(optp, ["trim"])
    assert summary["none"]["test_mse"] == optp["victim"]["test_mse"]
    assert summary["trim"]["test_mse_ratio"] == pytest.approx(t["test_mse"] / clean)


def test_error_curves_plot_the_mse_of_a_regression_grid():
    cells = [{"attack": "o", "seed": s, "baseline_clean_accuracy": None, "baseline_test_mse": 0.01 * (s + 1),
              "summary": {"none": {"test_mse": 0.1 * (s + 1)}, "trim": {"test_mse": 0.02}}} for s in (0, 1)]
    rows = error_curves(cells, {"o": {"name": "optp", "rate": 0.1}}, ["trim"])
    assert [(r["defense"], r["rate"], round(r["test_mse_mean"], 6)) for r in rows] == [
        ("none", 0.0, 0.015), ("none", 0.1, 0.15), ("trim", 0.0, 0.015), ("trim", 0.1, 0.02)]
    fam = get_family("availability")
    shown = fam.display_rows([{"attack": "o", "defense": "none", "n_seeds": 2, "test_mse_mean": 0.15,
                               "test_mse_std": 0.07, "test_mse_ratio_mean": 9.0, "test_mse_ratio_std": 1.0,
                               "defense_seconds_mean": 0.0, "total_seconds_mean": 1.0}])
    assert shown[0]["test MSE (mean ± std)"] == "0.15000 ± 0.07000" and shown[0]["MSE / clean MSE (mean ± std)"] == \
        "9.00 ± 1.00"


def test_what_regression_refuses(tmp_path):
    x, y = _linear(np.random.default_rng(6), 60, 3)
    path = _write_csv(tmp_path / "r.csv", x, y)
    run = lambda **kw: _run(tmp_path, path, **kw)  # noqa: E731
    one_line(r"^data.classes picks classes, but the data are regression .*; remove it$", run,
             attack={"name": "statp"}, data={"classes": [0, 1]})
    one_line(r"^attack 'badnets' is not supported for regression .*; use statp, optp or label-flip", run,
             attack={"name": "badnets"})
    one_line(r"^attack 'gradient-poisoning' is not supported for regression", run,
             attack={"name": "gradient-poisoning"})
    one_line(r"^model 'linear-svm' is a classifier; the data are regression .*: use ols, ridge-regression, lasso or "
             r"elastic-net$", run, attack={"name": "statp"}, model="linear-svm")
    one_line(r"^model 'mlp' is a classifier", run, attack={"name": "statp"}, model="mlp")
    one_line(r"^defense 'sever' is not supported for regression .*; use trim$", run,
             attack={"name": "statp"}, defenses=[{"name": "sever"}])
    one_line(r"^attack.strategy greedy is not supported for regression", run,
             attack={"name": "label-flip", "strategy": "greedy"})
    _, cfg = load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [1, 7]},
                             model={"name": "ols"}, attack={"name": "label-flip"},
                             output={"dir": str(tmp_path / "runs"), "plots": False})
    one_line(r"^model 'ols' is a regressor, but the data have classes", run_config, cfg)
    _, cfg = load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [1, 7]},
                             model={"name": "logistic-regression"}, attack={"name": "optp"},
                             output={"dir": str(tmp_path / "runs"), "plots": False})
    one_line(r"^attack 'optp' poisons regression data \(data.options.task: regression\); the data have classes$",
             run_config, cfg)
    one_line(r"^attack.surrogate.learner must be one of ols, ridge, lasso, elastic-net, got 'svm'$", OptP,
             surrogate={"learner": "svm"})
    one_line(r"^config key 'attack.init' must be one of inverse, boundary, got 'zero'$", OptP, init="zero")
