"""The targeted attacks as a whole: target and poison-row choice, the random-noise control, a
feature collision that flips its target in the transfer setting, a brew that beats the noise
control on retrained victims, and a one-line error for each bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.models import build_model
from poisonlab.pipeline.context import Reference
from poisonlab.pipeline.victim_fit import LastLayerOnly
from poisonlab.targeted import FeatureCollision, GradientMatching, RandomNoise
from poisonlab.targeted.features import feature_map
from poisonlab.targeted.targets import replace_rows
from poisonlab.train import (
    TrainConfig,
    predict,
    predict_logits,
    seed_everything,
    train_model,
)
from one_line_errors import one_line

CPU = torch.device("cpu")


# -- a reference whose predictions are written into the test images ----------------------
class PixelOracle(nn.Module):
    """Predicts class floor(4 * x[:, 0, 0, 0]) of 4: the test set decides what the clean model gets wrong."""

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0, 0, 0] * 4).floor().long().clamp(0, 3), 4).float()


WRONG = [1, 6, 11, 16]  # test rows the reference misclassifies (classes 1, 2, 3, 0)


def oracle_data():
    g = torch.Generator().manual_seed(0)
    train = Dataset(torch.rand(40, 1, 3, 3, generator=g), torch.arange(40) % 4, list("abcd"))
    y = torch.arange(40) % 4
    x = torch.rand(40, 1, 3, 3, generator=g)
    pred = y.clone()
    pred[WRONG] = (y[WRONG] + 1) % 4
    x[:, 0, 0, 0] = (pred + 0.5) / 4
    return train, Dataset(x, y, list("abcd"))


def oracle_ref(test):
    return Reference(PixelOracle(), None, CPU, 0, test)


def test_random_targets_exact_count_not_poison_class_correct_only():
    train, test = oracle_data()
    qualify = {r for r in range(40) if r % 4 != 1 and r not in WRONG}
    assert len(qualify) == 27
    seen = set()
    for seed in range(10):
        pc, rows = RandomNoise(poison_class=1, targets={"n": 5}).choose(train, oracle_ref(test), np.random.default_rng(seed))
        assert pc == 1 and len(rows) == 5 and len(set(rows.tolist())) == 5 and set(rows.tolist()) <= qualify
        seen |= set(rows.tolist())
    assert len(seen) > 15  # drawn at random, not the first rows
    _, rows = RandomNoise(poison_class=1, targets={"n": 27}).choose(train, oracle_ref(test), np.random.default_rng(0))
    assert set(rows.tolist()) == qualify  # all of them, and only them
    msg = one_line("", RandomNoise(poison_class=1, targets={"n": 28}).choose, train, oracle_ref(test),
                   np.random.default_rng(0))
    assert msg == ("attack.targets.n = 28 targets asked for but only 27 test rows qualify (not of the poison class 1, "
                   "correctly classified by the clean model); lower n")
    # correct_only off: the misclassified rows qualify too
    _, rows = RandomNoise(poison_class=1, targets={"n": 30, "correct_only": False}).choose(
        train, oracle_ref(test), np.random.default_rng(0))
    assert set(rows.tolist()) == {r for r in range(40) if r % 4 != 1}
    one_line(r"only 30 test rows qualify \(not of the poison class 1\); lower n",
             RandomNoise(poison_class=1, targets={"n": 31, "correct_only": False}).choose, train, oracle_ref(test),
             np.random.default_rng(0))


def test_class_targets_draw_only_that_class_and_the_poison_class_avoids_it():
    train, test = oracle_data()
    classes = set()
    for seed in range(12):
        a = RandomNoise(targets={"select": "class", "true_class": 2, "n": 3})  # poison class drawn
        pc, rows = a.choose(train, oracle_ref(test), np.random.default_rng(seed))
        assert pc != 2 and bool((test.y[rows] == 2).all()) and not set(rows.tolist()) & set(WRONG)
        classes.add(pc)
    assert classes == {0, 1, 3}
    # class 2 has 10 test rows, one of them (row 6) misclassified: 9 qualify
    _, rows = RandomNoise(poison_class=0, targets={"select": "class", "true_class": 2, "n": 9}).choose(
        train, oracle_ref(test), np.random.default_rng(0))
    assert sorted(rows.tolist()) == [2, 10, 14, 18, 22, 26, 30, 34, 38]


def test_rows_targets_are_used_verbatim():
    train, test = oracle_data()
    a = RandomNoise(poison_class=0, budget=0.05, targets={"select": "rows", "rows": [6, 1, 7]})
    a.poison(train, np.random.default_rng(0), oracle_ref(test))
    assert a.target_rows_.tolist() == [6, 1, 7]  # in order, misclassified rows included
    ev = a.evaluation_set(test)
    assert torch.equal(ev.x, test.x[[6, 1, 7]]) and ev.target.tolist() == [0, 0, 0] and ev.true.tolist() == [2, 1, 3]
    assert ev.rows.tolist() == [6, 1, 7]
    d = a.describe()
    assert d["target_rows"] == [6, 1, 7] and d["poison_class"] == 0 and d["targets_select"] == "rows"
    assert d["n_poison_images"] == 2
    one_line(r"^attack.targets.rows holds 40; the test set has rows 0..39$",
             RandomNoise(poison_class=0, targets={"select": "rows", "rows": [3, 40]}).choose, train,
             oracle_ref(test), np.random.default_rng(0))
    one_line(r"^attack.targets.rows includes test rows of the poison class 0; they are classified",
             RandomNoise(poison_class=0, targets={"select": "rows", "rows": [3, 4]}).choose, train,
             oracle_ref(test), np.random.default_rng(0))


def test_same_seed_same_targets_and_rows_for_the_brew_and_its_control():
    train, test = oracle_data()
    kw = {"budget": 0.15, "eps": 0.1, "targets": {"n": 3}}  # poison class drawn from the generator too
    gm = GradientMatching(**kw, steps=1)
    torch.manual_seed(0)
    ref = Reference(nn.Sequential(nn.Flatten(), nn.Linear(9, 4)), None, CPU, 0, test)
    ref_pred = predict(ref.model, test.x)
    test = Dataset(test.x, ref_pred, test.classes)  # every row correct for this reference
    ref.test = test
    p_gm = gm.poison(train, np.random.default_rng(5), ref)
    rn = RandomNoise(**kw)
    p_rn = rn.poison(train, np.random.default_rng(5), ref)
    assert rn.poison_class_ == gm.poison_class_
    assert torch.equal(rn.target_rows_, gm.target_rows_)
    assert torch.equal(p_rn.poison_mask, p_gm.poison_mask) and p_rn.n_poison == round(0.15 * 40) == 6
    assert bool((train.y[p_rn.poison_mask] == rn.poison_class_).all())
    again = RandomNoise(**kw)
    p_again = again.poison(train, np.random.default_rng(5), ref)
    assert torch.equal(p_again.dataset.x, p_rn.dataset.x) and torch.equal(again.target_rows_, rn.target_rows_)
    other = RandomNoise(**kw)
    p_other = other.poison(train, np.random.default_rng(6), ref)
    assert not (torch.equal(p_other.poison_mask, p_rn.poison_mask) and torch.equal(other.target_rows_, rn.target_rows_))


def test_poison_rows_exact_sorted_of_the_class():
    train, _ = oracle_data()
    a = RandomNoise(poison_class=3)
    rows = a.poison_rows(train, 3, 7, np.random.default_rng(1))
    assert len(rows) == 7 and len(set(rows.tolist())) == 7 and rows.tolist() == sorted(rows.tolist())
    assert bool((train.y[rows] == 3).all())
    assert sorted(a.poison_rows(train, 3, 10, np.random.default_rng(1)).tolist()) == list(range(3, 40, 4))
    drawn = {tuple(a.poison_rows(train, 3, 3, np.random.default_rng(s)).tolist()) for s in range(10)}
    assert len(drawn) >= 8 and len({r for d in drawn for r in d}) == 10  # at random, over the whole class
    assert one_line("", a.poison_rows, train, 3, 11, np.random.default_rng(1)) == (
        "attack.budget asks for 11 poison images but the poison class 3 has 10 training rows; lower it")
    assert one_line("", a.poison_rows, train, 3, 0, np.random.default_rng(1)) == (
        "attack.budget gives 0 poison images of 40 training rows; raise it")


def _with_extremes(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(60, 1, 5, 5, generator=g)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0  # rows of pixels the noise must clip
    x[:, :, 2, :2] = 0.03  # within eps of 0: clipped at 0 when moved down
    return Dataset(x, torch.arange(60) % 3, list("abc"))


def test_random_noise_moves_each_pixel_by_exactly_eps_unless_clipped():
    train = _with_extremes(0)
    test = Dataset(train.x[:9].clone(), train.y[:9].clone(), list("abc"))
    eps = 8 / 255
    a = RandomNoise(poison_class=2, budget=0.25, eps=eps, targets={"n": 2, "correct_only": False})
    p = a.poison(train, np.random.default_rng(0), Reference(nn.Identity(), None, CPU, 0, test))
    mask = p.poison_mask
    assert p.n_poison == 15 and bool((train.y[mask] == 2).all())
    assert torch.equal(p.dataset.y, train.y) and torch.equal(p.dataset.x[~mask], train.x[~mask])
    old, new = train.x[mask].double(), p.dataset.x[mask].double()
    d = new - old
    exact = (d.abs() - eps).abs() < 1e-6
    clipped_low = (new == 0) & (old < eps) & (d <= 0)
    clipped_high = (new == 1) & (old > 1 - eps) & (d >= 0)
    assert bool((exact | clipped_low | clipped_high).all())
    assert int((clipped_low & ~exact).sum()) > 20 and int((clipped_high & ~exact).sum()) > 20
    up = float((d[exact] > 0).double().mean())
    assert 0.45 < up < 0.55  # the signs are fair coins
    assert a.report_["perturbation_linf_max"] == pytest.approx(eps, abs=1e-6)


def test_gradient_matching_poisons_respect_the_budget_eps_and_box(one_thread):
    train = _with_extremes(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 8), nn.Tanh(), nn.Linear(8, 3))
    test = Dataset(train.x[:9].clone(), predict(model, train.x[:9]), list("abc"))
    eps = 0.05
    a = GradientMatching(poison_class=1, budget=0.2, eps=eps, steps=15, restarts=2, targets={"n": 2})
    p = a.poison(train, np.random.default_rng(0), Reference(model, None, CPU, 0, test))
    mask = p.poison_mask
    assert p.n_poison == 12 and bool((train.y[mask] == 1).all())
    assert torch.equal(p.dataset.y, train.y) and torch.equal(p.dataset.x[~mask], train.x[~mask])
    d = p.dataset.x[mask] - train.x[mask]
    assert float(d.abs().max()) <= eps * (1 + 1e-6) and p.dataset.x.min() >= 0 and p.dataset.x.max() <= 1
    r = a.report_
    assert r["n_poison_images"] == 12 and r["matching_loss"] == min(r["restart_losses"]) and len(r["restart_losses"]) == 2
    assert r["perturbation_linf_max"] <= eps * (1 + 1e-6)


def test_replace_rows_keeps_labels_and_marks_the_rows():
    train, _ = oracle_data()
    new = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    p = replace_rows(train, torch.tensor([3, 8]), new)
    assert p.dataset.x.dtype == train.x.dtype and torch.equal(p.dataset.x[[3, 8]], torch.zeros(2, 1, 3, 3))
    assert p.poison_mask.nonzero().flatten().tolist() == [3, 8] and torch.equal(p.dataset.y, train.y)
    assert torch.equal(p.source_index, torch.arange(40)) and train.x[3].abs().sum() > 0  # the input is not changed


# -- feature collision in the transfer setting ---------------------------------------------
def two_feature_net():
    """Features of a 4x4 image: f1 = half the sum of its top 8 pixels, f2 = of its bottom 8 (each in
    [0, 4]); the head says class 1 when f1 > 2."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False), nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0, :8] = 0.5
        net[1].weight[1, 8:] = 0.5
        net[2].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([2.0, -2.0]))
    return net


def _halves(top, bottom, n, g):
    x = torch.empty(n, 1, 4, 4)
    x[:, :, :2], x[:, :, 2:] = top, bottom
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_feature_collision_flips_its_target_when_only_the_last_layer_is_retrained(one_thread):
    """Class 0 sits at f = (0.4, 0.4), class 1 at (3.6, 0.4); the target (class 0, correct) at (1.2, 2.0).
    Poisons of class 1 colliding with the target make {class 0} vs {class 1, poisons} linearly
    separable with the target on class 1's side, so a last layer that fits its training set must
    flip it; without poisons nothing pulls it across."""
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    train = Dataset(torch.cat([_halves(0.1, 0.1, 20, g), _halves(0.9, 0.1, 20, g)]),
                    torch.tensor([0] * 20 + [1] * 20), ["a", "b"])
    test = Dataset(torch.cat([_halves(0.3, 0.5, 1, g), _halves(0.1, 0.1, 5, g), _halves(0.9, 0.1, 5, g)]),
                   torch.tensor([0] * 6 + [1] * 5), ["a", "b"])
    ref = two_feature_net()
    assert torch.equal(predict(ref, test.x), test.y)
    a = FeatureCollision(poison_class=1, poisons_per_target=5, targets={"select": "rows", "rows": [0]},
                         iterations=300, step=0.1)
    a.check_model(ref)
    p = a.poison(train, np.random.default_rng(0), Reference(ref, None, CPU, 0, test))
    mask = p.poison_mask
    assert p.n_poison == 5 and bool((train.y[mask] == 1).all()) and torch.equal(p.dataset.y, train.y)
    x = p.dataset.x
    assert x.min() >= 0 and x.max() <= 1 and torch.equal(x[~mask], train.x[~mask])
    feats = feature_map(ref, "1")
    with torch.no_grad():
        ft = feats(test.x[:1])
        before = (feats(train.x[mask]) - ft).norm(dim=1)
        after = (feats(x[mask]) - ft).norm(dim=1)
    assert bool((before > 2.5).all()) and bool((after < 0.01).all()), (before, after)
    assert a.report_["beta"] == pytest.approx(0.2 * (2 / 16) ** 2) and a.report_["feature_dim"] == 2
    assert a.report_["feature_distance_mean"] == pytest.approx(float(after.mean()), rel=1e-4)

    # the transfer victim: features frozen, a (nearly unregularised) logistic regression on them
    def sklearn_victim(ds):
        with torch.no_grad():
            lr = LogisticRegression(C=1e4, max_iter=5000).fit(feats(ds.x).numpy(), ds.y.numpy())
            return lr.predict(feats(test.x).numpy()).tolist()

    assert sklearn_victim(train) == test.y.tolist()
    assert sklearn_victim(p.dataset) == [1] + test.y.tolist()[1:]  # the target flips, nothing else does

    # the pipeline's own transfer victim: the reference's weights, only the last linear trained
    def torch_victim(ds):
        v = copy.deepcopy(ref)
        train_model(LastLayerOnly(v, "2"), ds, TrainConfig(epochs=150, batch_size=64, optimizer="adam", lr=0.1,
                                                           schedule="constant"), seed=0)
        assert torch.equal(v[1].weight, ref[1].weight)
        return predict(v, test.x).tolist()

    assert torch_victim(train) == test.y.tolist()
    assert torch_victim(p.dataset) == [1] + test.y.tolist()[1:]


# -- gradient matching against its control on victims retrained from scratch ---------------
def test_brew_beats_random_noise_on_retrained_victims(one_thread):
    """3 prototype classes of 6x6 images; the target (class 0) lies 40% of the way to class 1. A
    brew of all 20 class-1 images at eps 0.1 makes retrained MLPs (5 seeds) call it class 1;
    ±eps noise on the same images does not, and the brew's margin beats the noise's on every seed."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 1, 6, 6, generator=g) * 0.6 + 0.2

    def make(n):
        y = torch.arange(n * 3) % 3
        return Dataset((protos[y] + 0.15 * torch.randn(n * 3, 1, 6, 6, generator=g)).clamp(0, 1), y, list("abc"))

    train, test = make(20), make(10)
    test.x[0] = (0.6 * protos[0] + 0.4 * protos[1]).clamp(0, 1)
    cfg = TrainConfig(epochs=50, batch_size=20, optimizer="adam", lr=0.01, schedule="constant", channels_last=False)

    def fit(ds, seed):
        seed_everything(seed)
        m = build_model("mlp", (1, 6, 6), 3, {"hidden": [16]})
        train_model(m, ds, cfg, seed=seed)
        return m

    ref = fit(train, 0)
    assert predict(ref, test.x[:1]).item() == 0
    results = {}
    for cls in (GradientMatching, RandomNoise):
        a = cls(poison_class=1, budget=1 / 3, eps=0.1, steps=100, targets={"select": "rows", "rows": [0]})
        p = a.poison(train, np.random.default_rng(0), Reference(ref, None, CPU, 0, test))
        assert p.n_poison == 20
        margins = []
        for seed in range(1, 6):
            logits = predict_logits(fit(p.dataset, seed), test.x[:1])[0]
            margins.append(float(logits[1] - logits[0]))
        results[cls.name] = margins
    brewed, noise = results["gradient-matching"], results["random-noise"]
    assert sum(m > 0 for m in brewed) >= 4, results
    assert sum(m > 0 for m in noise) == 0, results
    assert min(brewed) > max(noise) + 0.5, results


# -- bad inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"eps": 0}, r"^attack.eps must be in \(0, 1\], got 0.0$"),
    ({"eps": 1.5}, r"^attack.eps must be in \(0, 1\], got 1.5$"),
    ({"eps": "x"}, r"^config key 'attack.eps' must be a number, got 'x'$"),
    ({"budget": 0}, r"^attack.budget must be in \(0, 1\], got 0.0$"),
    ({"tau": 2}, r"^attack.tau must be in \(0, 1\], got 2.0$"),
    ({"steps": 0}, r"^attack.steps must be in 1..100000, got 0$"),
    ({"augment": 65}, r"^attack.augment must be in 0..64 \(pixels\), got 65$"),
    ({"bogus": 1}, r"^unknown config key 'attack.bogus'; allowed under 'attack': name, poison_class, targets, budget"),
    ({"targets": {"nn": 2}}, r"^unknown config key 'attack.targets.nn'.*allowed under 'attack.targets': select, n,"),
    ({"targets": {"n": 0}}, r"^attack.targets.n must be in 1..10000, got 0$"),
    ({"targets": {"select": "class"}}, r"^attack.targets.select 'class' needs attack.targets.true_class"),
    ({"targets": {"true_class": 1}}, r"^attack.targets.true_class applies to select: class only; remove it$"),
    ({"targets": {"select": "rows"}}, r"^attack.targets.select 'rows' needs attack.targets.rows"),
    ({"targets": {"select": "rows", "rows": [2, 2]}}, r"^attack.targets.rows must be at most 10000 distinct test rows$"),
    ({"targets": {"rows": [2]}}, r"^attack.targets.rows applies to select: rows only; remove it$"),
    ({"poison_class": -1}, r"^attack.poison_class must be in 0..100000 \(a class index\), got -1$"),
])
def test_gradient_matching_config_errors(kw, match):
    one_line(match, GradientMatching, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"decay": 1}, r"^attack.decay must be in \(0, 1\), got 1.0$"),
    ({"opacity": 1}, r"^attack.opacity must be in \[0, 1\), got 1.0$"),
    ({"step": 0}, r"^attack.step must be in \(0, 1e\+06\], got 0.0$"),
    ({"layer": ""}, r"^attack.layer must be a layer name or 'auto', got ''$"),
    ({"poisons_per_target": 0}, r"^attack.poisons_per_target must be in 1..100000, got 0$"),
])
def test_feature_collision_config_errors(kw, match):
    one_line(match, FeatureCollision, **kw)


def test_errors_that_need_the_data_or_the_model():
    train, test = oracle_data()
    one_line(r"^attack.poison_class 7 is out of range; the data set has classes 0..3$",
             RandomNoise(poison_class=7).check, train)
    one_line(r"^attack.targets.true_class 9 is out of range; the data set has classes 0..3$",
             RandomNoise(targets={"select": "class", "true_class": 9}).check, train)
    one_line(r"^attack.targets.true_class equals attack.poison_class \(2\): a target of the poison class",
             RandomNoise(poison_class=2, targets={"select": "class", "true_class": 2}).check, train)
    one_line(r"^random-noise asks for 20 poison images but the poison class 1 has 10 training rows; lower the budget$",
             RandomNoise(poison_class=1, budget=0.5).poison, train, np.random.default_rng(0), oracle_ref(test))
    one_line(r"^random-noise asks for 20 poison images but the poison class 1 has 10 training rows; lower the budget$",
             RandomNoise(poison_class=1, budget=0.5).check, train)  # before any training
    one_line(r"^feature-collision asks for 11 poison images but the poison class 1 has 10 training rows;",
             FeatureCollision(poison_class=1, targets={"n": 11}).check, train)
    one_line(r"^attack.budget asks for 20 poison images but the poison class 1 has 10 training rows; lower it$",
             RandomNoise(budget=0.5).poison_rows, train, 1, 20, np.random.default_rng(0))
    one_line(r"^random-noise perturbs images; the data set has rows of shape \(9,\)$",
             RandomNoise(poison_class=1).check, Dataset(train.x.reshape(40, 9), train.y, train.classes))
    one_line(r"^gradient-matching needs the clean reference model as its surrogate$",
             GradientMatching(poison_class=1, budget=0.25).poison, train, np.random.default_rng(0))
    one_line(r"^random-noise picks its targets from the test rows; none were given$",
             RandomNoise(poison_class=1, budget=0.25).poison, train, np.random.default_rng(0), Reference(PixelOracle(), None, CPU, 0))
    one_line(r"^random-noise: call poison\(\) first; it picks the targets$", RandomNoise().evaluation_set, test)
    model = build_model("digits-cnn", (1, 8, 8), 10, {})
    one_line(r"^model has no layer 'fc3' \(did you mean 'fc2'\?\); layers: conv1, relu1, conv2, relu2, pool, "
             r"flatten, fc1, relu3, fc2$", FeatureCollision(layer="fc3").check_model, model)
    FeatureCollision(layer="fc1").check_model(model)  # a layer that exists passes
    one_line(r"^FeatureCollision takes a config or keyword parameters, not both$", FeatureCollision, {}, step=0.1)
    one_line(r"^GradientMatching takes a GradientMatchingConfig, a mapping or keywords, got 3$", GradientMatching, 3)
