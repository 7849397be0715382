"""The objectives of the targeted attacks, against closed forms, hand values and finite
differences: the proximal step and forward-backward splitting of feature collision (Shafahi et
al. 2018), the gradient-matching loss and brew of Witches' Brew (Geiping et al. 2021), the
differentiable shift, the feature map, and the perturbation norms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.targeted.feature_collision import collide, proximal_step
from poisonlab.targeted.features import feature_map, resolve_feature_layer
from poisonlab.targeted.gradient_matching import (
    brew,
    evaluate_loss,
    matching_loss,
    shift,
    target_gradient,
)
from poisonlab.targeted.targets import need_fraction, perturbation_norms


# -- proximal step ------------------------------------------------------------------------
def _prox_objective(x, base, x_hat, lam, beta):
    lam = lam.reshape(-1, *([1] * (x.dim() - 1)))
    return (beta * (x - base) ** 2 + (x - x_hat) ** 2 / (2 * lam)).sum()


def test_proximal_step_is_the_argmin_gradient_zero():
    g = torch.Generator().manual_seed(3)
    x_hat = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 0.5
    base = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.01, 0.3, 1.0, 7.5], dtype=torch.float64)  # one step per row
    beta = 0.8
    x = proximal_step(x_hat, base, lam, beta).requires_grad_(True)
    (grad,) = torch.autograd.grad(_prox_objective(x, base, x_hat, lam, beta), x)
    assert grad.abs().max() < 1e-12
    # a strictly convex objective: every nearby point is worse
    best = float(_prox_objective(x.detach(), base, x_hat, lam, beta))
    for _ in range(5):
        other = x.detach() + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        assert float(_prox_objective(other, base, x_hat, lam, beta)) > best


def test_proximal_step_hand_values():
    # x_hat 1, base 0, lam 0.5, beta 1: (1 + 0) / (1 + 1) = 0.5
    # x_hat 0.2, base 1, lam 0.25, beta 2: (0.2 + 2*0.25*2*1) / (1 + 1) = 0.6
    x_hat = torch.tensor([[1.0], [0.2]], dtype=torch.float64)
    base = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = proximal_step(x_hat, base, torch.tensor([0.5, 0.25], dtype=torch.float64), 1.0)
    assert out[0, 0].item() == pytest.approx(0.5, abs=1e-15)
    out = proximal_step(x_hat, base, torch.tensor([0.5, 0.25], dtype=torch.float64), 2.0)
    assert out[0, 0].item() == pytest.approx((1 + 0) / (1 + 2), abs=1e-15)
    assert out[1, 0].item() == pytest.approx(0.6, abs=1e-15)
    # beta 0: no pull to the base at all
    assert torch.equal(proximal_step(x_hat, base, torch.tensor([0.5, 0.25], dtype=torch.float64), 0.0), x_hat)


# -- forward-backward splitting --------------------------------------------------------
def test_collide_identity_features_reaches_the_closed_form():
    """Features = the input: min ||x - t||^2 + beta ||x - b||^2 in the box is (t + beta b) / (1 + beta)
    clipped to [0, 1] (separable), with objective beta/(1+beta) ||t-b||^2 where unclipped."""
    feats = feature_map(nn.Identity(), None)
    base = torch.tensor([[[[0.1, 0.9], [0.5, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[0.7, 1.6, 0.5, -0.4]], dtype=torch.float64)  # 1.6 and -0.4: outside the box
    beta = 1.0
    x, info = collide(feats, target, base, beta, iterations=500, step=0.2, decay=0.5, tolerance=1e-14)
    expected = ((target.reshape(1, 1, 2, 2) + beta * base) / (1 + beta)).clamp(0, 1)
    assert torch.allclose(x, expected, atol=1e-9)
    assert x.flatten().tolist()[1] == 1.0 and x.flatten().tolist()[3] == 0.0  # clipped exactly
    obj = float(((expected.reshape(1, -1) - target) ** 2).sum() + beta * ((expected - base) ** 2).sum())
    assert info["objective_end"][0] == pytest.approx(obj, rel=1e-9)
    assert info["objective_start"][0] == pytest.approx(float(((base.reshape(1, -1) - target) ** 2).sum()), rel=1e-12)
    assert 1 < info["iterations"] < 500  # stopped by the tolerance


def test_collide_too_long_steps_decay_and_still_converge():
    feats = feature_map(nn.Identity(), None)
    base = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    target = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.3, 0.7]], dtype=torch.float64)
    beta = 0.01
    x, info = collide(feats, target, base, beta, iterations=400, step=50.0, decay=0.5, tolerance=1e-14)
    expected = (target.reshape(2, 1, 2, 2) + beta * base) / (1 + beta)
    assert torch.allclose(x, expected, atol=1e-7)
    assert all(e <= s for e, s in zip(info["objective_end"], info["objective_start"]))


def test_collide_keeps_the_best_iterate_when_steps_overshoot():
    """The base is nearly optimal; two overlong steps land on worse points: the base comes back."""
    feats = feature_map(nn.Identity(), None)
    base = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    target = torch.tensor([[0.45, 0.55, 0.5, 0.52]], dtype=torch.float64)
    x, info = collide(feats, target, base, 0.01, iterations=2, step=50.0, decay=0.5)
    assert torch.equal(x, base)
    assert info["objective_end"] == info["objective_start"]
    assert info["objective_start"][0] == pytest.approx(0.05 ** 2 * 2 + 0.02 ** 2, rel=1e-12)


def _tanh_features():
    torch.manual_seed(11)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh()).double()


def test_collide_nonlinear_features_collide_in_the_box():
    net = _tanh_features()
    feats = feature_map(net, "2")
    g = torch.Generator().manual_seed(5)
    base = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    base[:, :, 0] = 1.0  # pixels at the box's edges from the start
    base[:, :, 1] = 0.0
    with torch.no_grad():
        target_feat = feats(torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64))
    beta = 0.02 * (6 / 16) ** 2  # beta0 0.02 with the paper's rescaling: the feature term dominates
    x, info = collide(feats, target_feat, base, beta, iterations=400, step=0.5, decay=0.5)
    with torch.no_grad():
        start = ((feats(base) - target_feat) ** 2).sum(1).sqrt()
        dist = ((feats(x) - target_feat) ** 2).sum(1).sqrt()
        obj = ((feats(x) - target_feat) ** 2).sum(1) + beta * ((x - base) ** 2).reshape(3, -1).sum(1)
    assert bool((dist < 0.05 * start).all()), (dist, start)
    assert x.min() >= 0 and x.max() <= 1
    assert info["feature_distance"] == pytest.approx(dist.tolist(), rel=1e-9)
    assert info["objective_end"] == pytest.approx(obj.tolist(), rel=1e-9)
    assert all(e < 0.05 * s for e, s in zip(info["objective_end"], info["objective_start"]))
    assert not torch.equal(x, base)


# -- gradient matching ---------------------------------------------------------------------
def test_matching_loss_known_values():
    g = [torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)]
    norm = torch.sqrt(sum((t * t).sum() for t in g))
    assert float(matching_loss(g, g, norm)) == pytest.approx(0.0, abs=1e-15)
    assert float(matching_loss([3 * t for t in g], g, norm)) == pytest.approx(0.0, abs=1e-15)  # scale-free
    assert float(matching_loss([-t for t in g], g, norm)) == pytest.approx(2.0, abs=1e-15)
    ortho = [torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64)]
    assert float(matching_loss(ortho, g, norm)) == pytest.approx(1.0, abs=1e-15)
    # <p, t> = 2 + 0 + 2 = 4, |p| = 3, |t| = sqrt(5): 1 - 4 / (3 sqrt 5)
    t = [torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)]
    assert float(matching_loss(g, t, torch.tensor(math.sqrt(5.0), dtype=torch.float64))) == pytest.approx(1 - 4 / (3 * math.sqrt(5)),
                                                                                     rel=1e-14)


def test_target_gradient_hand_case():
    """A zero linear model: p = (1/2, 1/2); the gradient of CE at class 1 is (p - e_1) x^T."""
    model = nn.Linear(2, 2).double()
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    grads, norm = target_gradient(model, torch.tensor([[1.0, 2.0]], dtype=torch.float64), 1)
    assert torch.equal(grads[0], torch.tensor([[0.5, 1.0], [-0.5, -1.0]], dtype=torch.float64))
    assert torch.equal(grads[1], torch.tensor([0.5, -0.5], dtype=torch.float64))
    assert float(norm) == pytest.approx(math.sqrt(3.0), rel=1e-15)
    assert all(not g.requires_grad for g in grads)


def _smooth_net():
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def test_matching_loss_input_gradient_matches_finite_differences():
    model = _smooth_net()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(4)
    target_x = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64)
    tg, tn = target_gradient(model, target_x, 1)
    labels = torch.tensor([1, 1, 0])

    def loss_of(x, create_graph):
        ce = nn.functional.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(ce, params, create_graph=create_graph)
        return matching_loss(list(grads), tg, tn)

    x0 = torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(loss_of(x, True), x)
    h, numeric = 1e-6, torch.zeros_like(x0)
    flat = numeric.view(-1)
    for i in range(x0.numel()):
        e = torch.zeros(x0.numel(), dtype=torch.float64)
        e[i] = h
        e = e.view_as(x0)
        flat[i] = (float(loss_of(x0 + e, False)) - float(loss_of(x0 - e, False))) / (2 * h)
    assert analytic.norm() > 1e-3  # a real gradient, not a vanishing one
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-9), (analytic - numeric).abs().max()


def test_shift_translates_with_zero_fill_and_passes_gradients():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3).requires_grad_(True)
    down = shift(x, 1, 0)
    assert down[0, 0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert shift(x, -1, 0)[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]
    assert shift(x, 0, 1)[0, 0].tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]
    assert shift(x, 1, -1)[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    assert shift(x, 0, 0) is x
    (grad,) = torch.autograd.grad(down.sum(), x)
    assert grad[0, 0].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]  # the last row fell off


def _brew_setup():
    """A tiny MLP fitted to 3 prototype classes; poisons of class 2, targets of class 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    protos = torch.rand(3, 1, 4, 4, generator=g)
    y = torch.arange(30) % 3
    x = (protos[y] + 0.1 * torch.randn(30, 1, 4, 4, generator=g)).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    base = x[y == 2][:6].clone()
    base[:2] = base[:2].round()  # pixels at 0 and 1: the box binds
    return model, base, torch.full((6,), 2), x[y == 0][:2].clone()


def _sign_noise(base, eps):
    g = torch.Generator().manual_seed(0)
    return (base + eps * (torch.randint(0, 2, base.shape, generator=g) * 2 - 1)).clamp(0, 1)


def _check_box(poisons, base, eps):
    delta = poisons - base
    assert float(delta.abs().max()) <= eps * (1 + 1e-6)
    assert poisons.min() >= 0 and poisons.max() <= 1
    assert float(delta.abs().max()) > 0.5 * eps  # it did move


@pytest.mark.parametrize("batch_size", [6, 4])  # one batch; two batches (4 + 2)
def test_brew_lowers_the_matching_loss_within_the_constraints(batch_size, one_thread):
    model, base, labels, target_x = _brew_setup()
    before = [p.detach().clone() for p in model.parameters()]
    tg, tn = target_gradient(model, target_x, 2)
    eps = 0.1
    start = evaluate_loss(model, base, labels, tg, tn, batch_size)
    control = evaluate_loss(model, _sign_noise(base, eps), labels, tg, tn, batch_size)
    poisons, info = brew(model, base, labels, target_x, 2, eps, steps=40, restarts=2, tau=0.1,
                         batch_size=batch_size, augment=0, rng=np.random.default_rng(0))
    assert start > 1.0  # the clean poisons' gradients point elsewhere
    assert info["loss"] < min(start, control) - 0.2, (info, start, control)  # far below clean and ±eps noise
    assert len(info["restart_losses"]) == 2 and info["loss"] == min(info["restart_losses"])
    assert info["loss"] == pytest.approx(evaluate_loss(model, poisons, labels, tg, tn, batch_size), abs=1e-6)
    _check_box(poisons, base, eps)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))  # the surrogate untouched


def test_brew_with_augment_matches_over_shifted_copies(one_thread):
    """Brewed for shifts of up to one pixel, the poisons match better on average over those shifts
    than the clean images, ±eps noise, and a brew without augmentation."""
    model, base, labels, target_x = _brew_setup()
    tg, tn = target_gradient(model, target_x, 2)
    eps = 0.1

    def over_shifts(x):
        return float(np.mean([evaluate_loss(model, shift(x, dy, dx), labels, tg, tn, 4)
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]))

    aug, _ = brew(model, base, labels, target_x, 2, eps, 80, 2, 0.1, 4, 1, np.random.default_rng(0))
    plain, _ = brew(model, base, labels, target_x, 2, eps, 80, 2, 0.1, 4, 0, np.random.default_rng(0))
    got = over_shifts(aug)
    assert got < over_shifts(base) - 0.02 and got < over_shifts(_sign_noise(base, eps)) - 0.02
    assert got < over_shifts(plain) - 0.01
    _check_box(aug, base, eps)


def test_brew_is_deterministic_in_its_generator():
    model, base, labels, target_x = _brew_setup()

    def run(seed):
        return brew(model, base, labels, target_x, 2, 0.05, 10, 1, 0.1, 6, 0, np.random.default_rng(seed))[0]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


# -- the feature map -----------------------------------------------------------------------
def test_feature_map_is_the_prefix_of_the_network_and_stops_there():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    calls = []
    model[3].register_forward_hook(lambda *_: calls.append(1))
    model.train()
    feats = feature_map(model, "2")
    assert not model.training
    x = torch.rand(5, 1, 2, 2).requires_grad_(True)
    out = feats(x)
    assert torch.equal(out, model[2](model[1](model[0](x))))
    assert calls == []  # the layers after the feature layer never ran
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(feature_map(model, None)(x), x.reshape(5, -1))


def test_resolve_feature_layer():
    assert resolve_feature_layer(build_model("digits-cnn", (1, 8, 8), 10, {}), "auto") == "relu3"
    assert resolve_feature_layer(build_model("mlp", (1, 4, 4), 3, {"hidden": []}), "auto") is None
    assert resolve_feature_layer(build_model("mlp", (1, 4, 4), 3, {"hidden": [5]}), "fc1") == "fc1"
    with pytest.raises(PoisonlabError, match=r"model has no layer 'fc9'.*layers: flatten, fc1, relu1, out") as e:
        resolve_feature_layer(build_model("mlp", (1, 4, 4), 3, {"hidden": [5]}), "fc9")
    assert "\n" not in str(e.value)

    class NotSequential(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

    with pytest.raises(PoisonlabError, match=r"attack.layer 'auto': NotSequential is not an nn.Sequential.*"
                                             r"name the feature layer \(attack.layer\)"):
        resolve_feature_layer(NotSequential(), "auto")


# -- small helpers ------------------------------------------------------------------------
def test_perturbation_norms_hand_values():
    old = torch.zeros(2, 1, 2, 2)
    new = old.clone()
    new[0, 0, 0] = torch.tensor([0.3, -0.4])  # linf 0.4, l2 0.5
    new[1, 0, 1, 1] = 0.1  # linf 0.1, l2 0.1
    n = perturbation_norms(new, old)
    assert n["linf_mean"] == pytest.approx(0.25, rel=1e-6) and n["linf_max"] == pytest.approx(0.4, rel=1e-6)
    assert n["l2_mean"] == pytest.approx(0.3, rel=1e-6) and n["l2_max"] == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("bad,shown_as", [(0, "0"), (1.5, "1.5"), (-0.1, "-0.1"), ("x", "'x'"), (None, "None")])
def test_need_fraction_rejects(bad, shown_as):
    with pytest.raises(PoisonlabError) as e:
        need_fraction(bad, "attack.eps")
    assert str(e.value) == f"attack.eps must be in (0, 1], got {shown_as}"
    assert need_fraction(1, "attack.eps") == 1.0 and need_fraction(0.25, "k") == 0.25
