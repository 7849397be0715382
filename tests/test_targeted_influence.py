"""Influence-function poisoning (Koh & Liang 2017): the influence of removing or moving a training
row against leave-one-out and finite-difference retraining, conjugate gradients against a direct
solve, an attack that flips a target where it must, its random control, and its errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.models.estimators import EstimatorModel
from poisonlab.pipeline.context import Reference
from poisonlab.targeted.influence import (InfluencePoisoning, _loss, conjugate_gradient, hessian_vector_product,
                                          input_influence, logistic_parameters, point_gradients, removal_influence)


def _fit(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> EstimatorModel:
    est = LogisticRegression(C=c, tol=1e-12, max_iter=10_000)
    return EstimatorModel(est, 2).fit_arrays(torch.tensor(x), torch.tensor(y), 2, 0)


@pytest.fixture()
def tiny():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(np.int64)
    return x, y, torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64), 1


def test_conjugate_gradient_equals_a_direct_solve(tiny):
    x, y, _, _ = tiny
    theta, c, _ = logistic_parameters(_fit(x, y))
    hvp = hessian_vector_product(theta, torch.tensor(x), c)
    h = torch.stack([hvp(e) for e in torch.eye(4, dtype=torch.float64)], 1)
    # the Hessian by hand: C sum p(1 - p) x~ x~^T + diag(1, 1, 1, 0)
    xt = np.hstack([x, np.ones((60, 1))])
    p = 1 / (1 + np.exp(-xt @ theta.numpy()))
    assert np.allclose(h.numpy(), (xt * (p * (1 - p))[:, None]).T @ xt + np.diag([1, 1, 1, 0.0]), atol=1e-10)
    g = torch.tensor([0.2, -0.1, 0.4, 0.3], dtype=torch.float64)
    assert torch.allclose(conjugate_gradient(hvp, g, 50), torch.linalg.solve(h, g), atol=1e-9)


def test_point_gradients_match_autograd(tiny):
    x, y, _, _ = tiny
    theta = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64, requires_grad=True)
    for i in (0, 7):
        (g,) = torch.autograd.grad(_loss(theta, torch.tensor(x[i]), int(y[i])), theta)
        assert torch.allclose(point_gradients(theta.detach(), torch.tensor(x[i:i + 1]), torch.tensor(y[i:i + 1]))[0], g)


def test_removal_influence_matches_leave_one_out_retraining(tiny):
    x, y, xt, yt = tiny
    theta, c, _ = logistic_parameters(_fit(x, y))
    predicted = removal_influence(theta, c, torch.tensor(x), torch.tensor(y), xt, yt).numpy()
    base = float(_loss(theta, xt, yt))
    actual = []
    for i in range(8):
        keep = np.arange(60) != i
        theta_i, _, _ = logistic_parameters(_fit(x[keep], y[keep]))
        actual.append(float(_loss(theta_i, xt, yt)) - base)
    actual = np.array(actual)
    assert np.allclose(predicted[:8], actual, rtol=0.15, atol=2e-4)  # first order: within 15%
    assert np.corrcoef(predicted[:8], actual)[0, 1] > 0.99


def test_input_influence_matches_finite_differences_of_retraining(tiny):
    x, y, xt, yt = tiny
    theta, c, _ = logistic_parameters(_fit(x, y))
    grad = input_influence(theta, c, torch.tensor(x), torch.tensor(y), xt, yt).numpy()
    h = 1e-3
    for i, j in ((0, 0), (5, 2), (11, 1)):
        moved = []
        for sign in (1, -1):
            xs = x.copy()
            xs[i, j] += sign * h
            th, _, _ = logistic_parameters(_fit(xs, y))
            moved.append(float(_loss(th, xt, yt)))
        assert (moved[0] - moved[1]) / (2 * h) == pytest.approx(grad[i, j], rel=0.05, abs=1e-5)


def _problem():
    """Two 2-D blobs; the target is a class-0 point near the boundary."""
    rng = np.random.default_rng(1)
    x0 = rng.normal([-1.0, 0.0], 0.6, size=(40, 2))
    x1 = rng.normal([1.0, 0.0], 0.6, size=(40, 2))
    x = np.clip(np.vstack([x0, x1]) / 4 + 0.5, 0, 1)
    y = np.array([0] * 40 + [1] * 40)
    train = Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y), ["a", "b"])
    test = Dataset(torch.tensor([[0.45, 0.5]], dtype=torch.float32), torch.tensor([0]), ["a", "b"])
    model = _fit(x, y, c=10.0)
    return train, test, Reference(model, None, torch.device("cpu"), 0, test)


def test_the_attack_flips_a_target_that_its_random_control_does_not():
    train, test, ref = _problem()
    assert int(ref.model(test.x).argmax(1)) == 0
    attack = InfluencePoisoning(poison_class=1, targets={"select": "rows", "rows": [0]}, k=20, eps=0.2, steps=3)
    result = attack.poison(train, np.random.default_rng(0), ref)
    moved = result.poison_mask.nonzero().flatten()
    assert len(moved) == 20 and torch.equal(result.dataset.y, train.y)  # clean-label: labels kept
    delta = (result.dataset.x - train.x)[moved]
    assert float(delta.abs().max()) <= 0.2 + 1e-6 and float(result.dataset.x.min()) >= float(train.x.min()) - 1e-6
    losses = attack.report_["target_loss_by_step"]
    assert losses == sorted(losses) and len(losses) == 3  # the target's loss rises with every refit
    victim = _fit(result.dataset.x.double().numpy(), result.dataset.y.numpy(), c=10.0)
    assert int(victim(test.x).argmax(1)) == 1
    control = InfluencePoisoning(poison_class=1, targets={"select": "rows", "rows": [0]}, k=20, eps=0.2, mode="random")
    noisy = control.poison(train, np.random.default_rng(0), ref)
    rows = noisy.poison_mask.nonzero().flatten()
    d = (noisy.dataset.x - train.x)[rows]
    lo, hi = train.x.min(0).values, train.x.max(0).values
    at_box = (noisy.dataset.x[rows] <= lo + 1e-6) | (noisy.dataset.x[rows] >= hi - 1e-6)
    assert bool(((d.abs() - 0.2).abs() < 1e-6)[~at_box].all()) and len(rows) == 20  # +-eps unless clipped
    assert int(_fit(noisy.dataset.x.double().numpy(), noisy.dataset.y.numpy(), c=10.0)(test.x).argmax(1)) == 0


def test_bad_input_is_one_line():
    train, test, ref = _problem()
    with pytest.raises(PoisonlabError, match=r"^influence poisoning attacks one target per run; set attack.targets.n: 1$"):
        InfluencePoisoning(targets={"n": 2})
    with pytest.raises(PoisonlabError, match=r"^attack.eps must be in \(0, 1\], got 0\.0$"):
        InfluencePoisoning(eps=0)
    with pytest.raises(PoisonlabError, match=r"^attack.k = 81 is more than the 80 training rows; lower it$"):
        InfluencePoisoning(k=81).check(train)
    three = Dataset(train.x, train.y % 2 + (train.y == 1) * 1, ["a", "b", "c"])
    with pytest.raises(PoisonlabError, match=r"^influence poisoning attacks a binary logistic regression; the data set "
                                             r"has 3 classes"):
        InfluencePoisoning().check(three)
    forest = Reference(torch.nn.Linear(2, 2), None, torch.device("cpu"), 0, test)
    with pytest.raises(PoisonlabError, match=r"^influence poisoning needs the exact Hessian of a binary logistic"):
        InfluencePoisoning(poison_class=1, targets={"select": "rows", "rows": [0]}).poison(
            train, np.random.default_rng(0), forest)
