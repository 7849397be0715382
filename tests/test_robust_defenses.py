"""TRIM / SEVER (robust_training) and label-flip certification (certified), with planted answers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poisonlab.data.base import Dataset
from poisonlab.defenses.certified import (
    certified_accuracy_curve,
    certified_flips,
    failure_bound,
    ridge_alpha,
    smoothed_prediction,
)
from poisonlab.defenses.robust_training import (
    cross_entropy_losses,
    last_layer_gradient_fn,
    last_layer_gradients,
    per_row_cross_entropy,
    scratch_fitter,
    sever,
    trim,
)
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.subpop.learners import LearnerSpec
from poisonlab.train import TrainConfig

# ---------------------------------------------------------------------------------- helpers


class Recorder(nn.Module):
    """A stand-in 'model' remembering the rows it was fitted on."""

    def __init__(self, idx: np.ndarray) -> None:
        super().__init__()
        self.idx = np.asarray(idx)


def blobs(n_per_class: int, n_flip_per_class: int, seed: int) -> tuple[Dataset, np.ndarray]:
    """Two separated 2-D blobs (class 0 at (-3, -3), class 1 at (3, 3)); some rows deep inside
    each blob get the other label. Returns the data set and the flipped-row mask."""
    g = np.random.default_rng(seed)
    x = np.concatenate([g.normal(-3, 0.5, (n_per_class, 2)), g.normal(3, 0.5, (n_per_class, 2))])
    y = np.repeat([0, 1], n_per_class)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[g.choice(n_per_class, n_flip_per_class, replace=False)] = True
    flipped[n_per_class + g.choice(n_per_class, n_flip_per_class, replace=False)] = True
    y = np.where(flipped, 1 - y, y)
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y), ["a", "b"]), flipped


LOGISTIC = LearnerSpec(name="mlp", options={"hidden": []},
                       train=TrainConfig(epochs=25, batch_size=25, optimizer="adam", lr=0.05, schedule="constant"))


# ------------------------------------------------------------------------------------- TRIM


def test_trim_drops_planted_regression_outliers():
    g = np.random.default_rng(0)
    x = g.uniform(-2, 2, 60)
    t = 2 * x + 1 + g.normal(0, 0.1, 60)
    planted = np.zeros(60, dtype=bool)
    planted[g.choice(60, 10, replace=False)] = True
    t[planted] += 15.0
    fitted: list[np.ndarray] = []

    def fit(idx: np.ndarray) -> nn.Module:
        fitted.append(idx)
        a = np.stack([x[idx], np.ones(len(idx))], 1)
        w, b = np.linalg.lstsq(a, t[idx], rcond=None)[0]
        lin = nn.Linear(1, 1).double()
        with torch.no_grad():
            lin.weight.fill_(w)
            lin.bias.fill_(b)
        return lin

    def losses(model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            pred = model(torch.tensor(x)[:, None]).squeeze(1).numpy()
        return (pred - t) ** 2

    res = trim(fit, losses, 60, keep=50)
    assert np.array_equal(res.removed, planted)
    assert res.converged and res.iterations == 2 and res.changes == [10, 0] and res.fits == 2
    assert np.array_equal(fitted[0], np.arange(60)) and np.array_equal(fitted[-1], np.flatnonzero(~planted))
    assert res.model.weight.item() == pytest.approx(2, abs=0.05) and res.model.bias.item() == pytest.approx(1, abs=0.05)
    assert res.losses.shape == (60,)


def test_trim_removes_exactly_the_flipped_labels_of_a_logistic_model():
    data, flipped = blobs(45, 5, seed=1)
    res = trim(scratch_fitter(LOGISTIC, data, seed=0), cross_entropy_losses(data), len(data), keep=len(data) - 10)
    assert np.array_equal(np.flatnonzero(res.removed), np.flatnonzero(flipped))
    assert res.converged and res.changes[-1] == 0 and res.changes[0] == 10
    clean = ~flipped
    pred = res.model(data.x).argmax(1).numpy()
    assert (pred[clean] == data.y.numpy()[clean]).all()


def test_trim_ties_go_to_lower_index_and_keep_all_stops_at_once():
    fit = Recorder
    res = trim(fit, lambda m: np.ones(6), 6, keep=4)
    assert np.flatnonzero(res.kept).tolist() == [0, 1, 2, 3]
    assert res.changes == [2, 0] and res.converged and res.iterations == 2
    res = trim(fit, lambda m: np.arange(5.0)[::-1], 5, keep=5)
    assert res.kept.all() and res.changes == [0] and res.iterations == 1 and res.fits == 1


def test_trim_stops_at_max_iters_and_refits_on_the_kept_rows():
    def losses(model: Recorder) -> np.ndarray:  # rows the model was fitted on look bad: the set oscillates
        out = np.zeros(4)
        if len(model.idx) < 4:
            out[model.idx] = 1.0
        return out

    res = trim(Recorder, losses, 4, keep=2, max_iters=3)
    assert res.changes == [2, 4, 4] and not res.converged and res.iterations == 3 and res.fits == 4
    assert np.flatnonzero(res.kept).tolist() == [0, 1]
    assert res.model.idx.tolist() == [0, 1]


# ------------------------------------------------------------------------------------ SEVER


def planted_gradients(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    grads = g.normal(0, 1, (100, 6))
    outliers = np.sort(g.choice(100, 5, replace=False))
    grads[outliers, 0] += 10.0
    return grads, outliers


@pytest.mark.parametrize("per_round", [5, 0.05])
def test_sever_removes_planted_gradient_outliers_in_round_one(per_round):
    grads, outliers = planted_gradients()
    fitted: list[np.ndarray] = []

    def fit(idx):
        fitted.append(idx)
        return Recorder(idx)

    res = sever(fit, lambda m, idx: grads[idx], 100, per_round, rounds=2)
    assert res.removed_per_round[0].tolist() == outliers.tolist()
    assert len(res.removed_per_round) == 2 and len(res.removed_per_round[1]) == 5
    assert res.kept.sum() == 90 and len(fitted) == 3
    assert np.array_equal(fitted[-1], np.flatnonzero(res.kept)) and res.model.idx.tolist() == fitted[-1].tolist()
    assert np.isnan(res.scores[outliers]).all() and np.isfinite(res.scores[fitted[1]]).all()
    # the last round's scores are the squared projections; the removed ones were the highest
    second = res.removed_per_round[1]
    assert res.scores[second].min() >= np.nanmax(np.where(res.kept, res.scores, -np.inf))


def test_sever_ties_and_constant_gradients():
    grads = np.zeros((10, 2))
    grads[[3, 7], 0] = 1.0
    res = sever(Recorder, lambda m, idx: grads[idx], 10, 1, rounds=1)
    assert res.removed_per_round[0].tolist() == [3]
    res = sever(Recorder, lambda m, idx: np.ones((len(idx), 3)), 10, 2, rounds=2)
    assert res.kept.all() and res.singular_values == [0.0, 0.0]
    assert all(len(r) == 0 for r in res.removed_per_round) and (res.scores == 0).all()


def test_sever_with_last_layer_gradients_finds_flipped_labels():
    data, flipped = blobs(46, 4, seed=2)
    res = sever(scratch_fitter(LOGISTIC, data, seed=0), last_layer_gradient_fn(data), len(data), 8, rounds=1)
    assert res.removed_per_round[0].tolist() == np.flatnonzero(flipped).tolist()


# --------------------------------------------------------------------- last-layer gradients


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_last_layer_gradients_equal_autograd(dtype, tol):
    torch.manual_seed(3)
    model = build_model("mlp", (4,), 3, {"hidden": [5]}).to(dtype)
    x = torch.randn(7, 4, dtype=dtype)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    ours = last_layer_gradients(model, x, y, batch_size=3)
    assert ours.shape == (7, 3 * 5 + 3) and ours.dtype == np.float64
    for i in range(7):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        ref = torch.cat([model.out.weight.grad.flatten(), model.out.bias.grad]).double().numpy()
        np.testing.assert_allclose(ours[i], ref, rtol=0, atol=tol)


def test_last_layer_gradients_without_bias_and_bad_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    g = last_layer_gradients(model, x, y)
    assert g.shape == (5, 8)
    with pytest.raises(PoisonlabError, match="does not produce the model's output"):
        last_layer_gradients(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), x.float(), y)
    with pytest.raises(PoisonlabError, match="no nn.Linear"):
        last_layer_gradients(nn.Sequential(nn.Flatten()), x, y)
    with pytest.raises(PoisonlabError, match="labels must be in 0..1"):
        last_layer_gradients(model, x, torch.tensor([0, 1, 2, 0, 1]))


def test_per_row_cross_entropy():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3, {"hidden": []})
    x, y = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
    ref = F.cross_entropy(model(x).double(), y, reduction="none").detach().numpy()
    np.testing.assert_allclose(per_row_cross_entropy(model, x, y, batch_size=4), ref, atol=1e-6)


# ------------------------------------------------------------------------------ certified


def test_ridge_alpha_by_hand():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # X^T X = [[2, 1], [1, 2]], inverse [[2, -1], [-1, 2]] / 3; x = (1, 0) -> x A^-1 = (2/3, -1/3)
    np.testing.assert_allclose(ridge_alpha(X, [1.0, 0.0], 0.0), [2 / 3, -1 / 3, 1 / 3], atol=1e-12)
    # + I: [[3, 1], [1, 3]], inverse [[3, -1], [-1, 3]] / 8 -> x A^-1 = (3/8, -1/8)
    np.testing.assert_allclose(ridge_alpha(X, [1.0, 0.0], 1.0), [3 / 8, -1 / 8, 2 / 8], atol=1e-12)
    # batched, and alpha @ y is the ridge regression prediction
    xs, y = np.array([[1.0, 0.0], [0.5, 2.0]]), np.array([1.0, 0.0, 1.0])
    a = ridge_alpha(X, xs, 0.3)
    w = np.linalg.solve(X.T @ X + 0.3 * np.eye(2), X.T @ y)
    assert a.shape == (2, 3)
    np.testing.assert_allclose(a @ y, xs @ w, atol=1e-12)


def test_certified_flips_hand_computed_case():
    # three training points x_i = 1, test point x = 1.5, lam = 0: alpha_i = 1.5 / 3 = 0.5
    alpha = ridge_alpha(np.ones((3, 1)), [1.5], 0.0)
    np.testing.assert_allclose(alpha, [0.5, 0.5, 0.5], atol=1e-12)
    y, q = np.ones(3), 0.1
    # class 1 fails when 0.5 K <= 1/2, K ~ Bin(3, 0.9). Chernoff with u = exp(-t/2):
    # (0.1 + 0.9 u)^3 / u, minimised at 2.7 u = 0.1 + 0.9 u, u = 1/18: 0.15^3 * 18 = 0.06075
    prob, label = smoothed_prediction(alpha, y, q)
    assert label == 1 and prob == pytest.approx(1 - 0.06075, abs=1e-9)
    # one flip (y' = (0, 1, 1)): (0.9 + 0.1 u)(0.1 + 0.9 u)^2 / u, minimised where u^2 + 4.5 u - 0.5 = 0
    u = (-4.5 + math.sqrt(4.5 ** 2 + 2.0)) / 2
    one = (0.9 + 0.1 * u) * (0.1 + 0.9 * u) ** 2 / u
    assert one == pytest.approx(0.32796, abs=1e-5)
    assert failure_bound(alpha, y, q, 1, r=1) == pytest.approx(one, abs=1e-9)
    # two flips: the true failure probability is 0.81 * 0.1 + 0.018 + 0.729 = 0.828 > 1/2
    assert failure_bound(alpha, y, q, 1, r=2) >= 0.828
    assert certified_flips(alpha, y, q) == 1
    assert certified_flips(alpha, y, q, max_r=0) == 0
    # no noise: the score 1.5 drops to 1.0 after one flip and to 0.5 (class 0) after two
    assert smoothed_prediction(alpha, y, 0.0) == (1.0, 1) and certified_flips(alpha, y, 0.0) == 1


def test_certified_class_zero_hand_case_shows_the_bound_is_conservative():
    alpha, y, q = np.full(3, 0.5), np.zeros(3), 0.1
    # class 0 fails when K >= 1, K ~ Bin(3, 0.1): truly 0.271, but Chernoff with v = exp(t/2)
    # gives (0.9 + 0.1 v)^3 / v, minimised at v = 4.5: 1.35^3 / 4.5 = 0.54675 >= 1/2
    prob, label = smoothed_prediction(alpha, y, q)
    assert label == 0 and prob == pytest.approx(1 - 1.35 ** 3 / 4.5, abs=1e-9)
    assert certified_flips(alpha, y, q) == -1
    # a weight of zero never moves the score: class 0 for sure, robust to every flip
    assert certified_flips(np.zeros(4), np.array([1, 0, 1, 1]), 0.2) == 4


def test_failure_bound_is_sound_against_exact_enumeration():
    g = np.random.default_rng(5)
    n, q = 7, 0.2
    outcomes = np.array(list(itertools.product([0, 1], repeat=n)), dtype=float)
    for trial in range(4):
        alpha = g.normal(0.12, 0.15, n)
        y = g.integers(0, 2, n).astype(float)
        _, label = smoothed_prediction(alpha, y, q)
        for r in range(3):
            worst = 0.0
            for flip in itertools.chain.from_iterable(itertools.combinations(range(n), k) for k in range(r + 1)):
                yf = y.copy()
                yf[list(flip)] = 1 - yf[list(flip)]
                pi = np.where(yf == 1, 1 - q, q)
                probs = np.prod(np.where(outcomes == 1, pi, 1 - pi), 1)
                score = outcomes @ alpha
                fail = score <= 0.5 if label == 1 else score > 0.5
                worst = max(worst, float(probs[fail].sum()))
            assert failure_bound(alpha, y, q, label, r) >= worst - 1e-12, (trial, r)
        radius = certified_flips(alpha, y, q)
        assert radius == -1 or failure_bound(alpha, y, q, label, radius) < 0.5


def test_certified_accuracy_curve_is_non_increasing():
    g = np.random.default_rng(0)

    def sample(m):
        y = g.integers(0, 2, m)
        x = g.normal(0, 0.6, (m, 2)) + np.where(y[:, None] == 1, 1.0, -1.0)
        return np.hstack([x, np.ones((m, 1))]), y

    Xtr, ytr = sample(80)
    Xte, yte = sample(25)
    curve = certified_accuracy_curve(Xtr, ytr, Xte, yte, q=0.1, lam=1.0, max_r=12)
    rs, accs = zip(*curve)
    assert list(rs) == list(range(13))
    assert all(0 <= a <= 1 for a in accs) and all(a >= b for a, b in itertools.pairwise(accs))
    assert accs[0] > 0.8 and accs[-1] < accs[0]
    alphas = ridge_alpha(Xtr, Xte, 1.0)
    radius = [certified_flips(a, ytr, 0.1, max_r=12) for a in alphas]
    correct = [smoothed_prediction(a, ytr, 0.1)[1] == t for a, t in zip(alphas, yte)]
    assert accs[5] == pytest.approx(np.mean([c and r >= 5 for c, r in zip(correct, radius)]))


# ----------------------------------------------------------------------------------- errors


def _raises(fn, match):
    with pytest.raises(PoisonlabError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_trim_and_sever_errors():
    ok_loss = lambda m: np.zeros(5)
    _raises(lambda: trim(Recorder, ok_loss, 5, keep=0), r"keep must be an integer in 1\.\.5")
    _raises(lambda: trim(Recorder, ok_loss, 5, keep=6), r"keep must be an integer in 1\.\.5")
    _raises(lambda: trim(Recorder, ok_loss, 5, keep=2.5), "keep must be")
    _raises(lambda: trim(Recorder, ok_loss, 0, keep=1), "n_rows must be")
    _raises(lambda: trim(Recorder, ok_loss, 5, keep=2, max_iters=0), "max_iters must be")
    _raises(lambda: trim(Recorder, lambda m: np.zeros(4), 5, keep=2), r"shape \(5,\)")
    _raises(lambda: trim(Recorder, lambda m: np.full(5, np.nan), 5, keep=2), "non-finite")
    grads = lambda m, idx: np.zeros((len(idx), 2))
    _raises(lambda: sever(Recorder, grads, 10, 1, rounds=0), "rounds must be")
    _raises(lambda: sever(Recorder, grads, 10, 0, rounds=1), "count must be >= 1")
    _raises(lambda: sever(Recorder, grads, 10, 5, rounds=2), "would remove all 10 rows")
    for bad in (0.0, 1.0, -0.2, True, "x"):
        _raises(lambda bad=bad: sever(Recorder, grads, 10, bad, rounds=1), "remove_per_round must be")
    _raises(lambda: sever(Recorder, lambda m, idx: np.zeros(len(idx)), 10, 1, rounds=1), r"\(10, P\) matrix")
    _raises(lambda: sever(Recorder, lambda m, idx: np.zeros((3, 2)), 10, 1, rounds=1), r"\(10, P\) matrix")
    model = build_model("mlp", (2,), 2, {"hidden": []})
    _raises(lambda: last_layer_gradients(model, torch.zeros(3, 2), torch.zeros(2)), "x has 3 rows but y has 2")
    _raises(lambda: per_row_cross_entropy(model, torch.zeros(3, 2), torch.zeros(4)), "x has 3 rows but y has 4")


def test_certified_errors():
    a, y = np.full(3, 0.5), np.ones(3)
    for q in (-0.1, 0.5, 0.7, True, float("nan")):
        _raises(lambda q=q: smoothed_prediction(a, y, q), r"q \(label-flip probability")
        _raises(lambda q=q: certified_flips(a, y, q), r"q \(label-flip probability")
    X = np.ones((3, 1))
    for lam in (-1.0, float("nan"), float("inf")):
        _raises(lambda lam=lam: ridge_alpha(X, [1.0], lam), r"lam \(ridge penalty\)")
    _raises(lambda: ridge_alpha(np.ones(3), [1.0], 0.1), "X_train must be a non-empty 2-D")
    _raises(lambda: ridge_alpha(X, [1.0, 2.0], 0.1), r"x_test must have shape \(1,\)")
    _raises(lambda: ridge_alpha(np.array([[1.0, 2.0], [2.0, 4.0]]), [1.0, 0.0], 0.0), "singular")
    _raises(lambda: smoothed_prediction(a, np.ones(2), 0.1), "y has 2 entries but 3")
    _raises(lambda: smoothed_prediction(np.ones((3, 1)), y, 0.1), "alpha must be a non-empty 1-D")
    _raises(lambda: smoothed_prediction(a, [0, 1, 2], 0.1), "binary labels")
    _raises(lambda: certified_flips(a, y, 0.1, max_r=-1), "max_r must be")
    _raises(lambda: failure_bound(a, y, 0.1, 2), "label must be 0 or 1")
    _raises(lambda: failure_bound(a, y, 0.1, 1, r=-1), "r .number of flipped labels")
    Xte, yte = np.ones((2, 1)), np.array([0, 1])
    _raises(lambda: certified_accuracy_curve(X, np.ones(2), Xte, yte, 0.1, 1.0, 3), "y_train has 2 entries but 3")
    _raises(lambda: certified_accuracy_curve(X, y, np.ones((2, 2)), yte, 0.1, 1.0, 3), r"X_test must be .*\(m, 1\)")
    _raises(lambda: certified_accuracy_curve(X, y, Xte, np.array([0, 1, 1]), 0.1, 1.0, 3), "y_test has 3 entries")
    _raises(lambda: certified_accuracy_curve(X, y, Xte, yte, 0.1, -1.0, 3), "lam")
    _raises(lambda: certified_accuracy_curve(X, y, Xte, yte, 0.6, 1.0, 3), "q ")
    _raises(lambda: certified_accuracy_curve(X, y, Xte, yte, 0.1, 1.0, -2), "max_r must be")
