"""StingRay on images with a torch surrogate: poisons that flip the local model and a transfer
victim (features frozen, last layer retrained) where the clean rows and unperturbed bases do
not, the l_inf ball and pixel box, bases nearest first in feature space (not pixel space), the
negative-impact test, the pipeline's checks and a one-line error per unsupported combination."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.models import build_model
from poisonlab.models.estimators import EstimatorModel
from poisonlab.pipeline.context import Reference
from poisonlab.pipeline.victim_fit import LastLayerOnly
from poisonlab.targeted.features import feature_map
from poisonlab.targeted.stingray import StingRay
from poisonlab.targeted.stingray_images import LocalHead, ball_bounds, head_inputs
from poisonlab.train import TrainConfig, predict, seed_everything, train_model
from one_line_errors import one_line

CPU = torch.device("cpu")
EPS = 16 / 255


def attack(**kw):
    return StingRay(**{"poison_class": 1, "targets": {"select": "rows", "rows": [0]}, **kw})


# -- a trained MLP on two prototype classes of 1x8x8 images ---------------------------------
@pytest.fixture(scope="module")
def task(one_thread):
    """Class 0 and 1 are noisy copies of two prototypes; the target (test row 0, class 0, classified
    right) lies 42% of the way to class 1: close enough for a few poisons of eps 16/255."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(2, 1, 8, 8, generator=g) * 0.6 + 0.2

    def make(n):
        y = torch.arange(2 * n) % 2
        return Dataset((protos[y] + 0.1 * torch.randn(2 * n, 1, 8, 8, generator=g)).clamp(0, 1), y, ["a", "b"])

    train, val, test = make(30), make(10), make(5)
    test.x[0] = (0.58 * protos[0] + 0.42 * protos[1]).clamp(0, 1)
    seed_everything(0)
    model = build_model("mlp", (1, 8, 8), 2, {"hidden": [16]})
    train_model(model, train, TrainConfig(epochs=30, batch_size=20, optimizer="adam", lr=0.01, schedule="constant",
                                          channels_last=False), seed=0)
    assert torch.equal(predict(model, test.x), test.y) and torch.equal(predict(model, val.x), val.y)
    return train, val, test, model, protos


def transfer_victim(model, data, test):
    """The pipeline's transfer victim: the reference's weights, only the last linear trained."""
    v = copy.deepcopy(model)
    train_model(LastLayerOnly(v, "out"), data, TrainConfig(epochs=300, batch_size=64, optimizer="adam", lr=0.05,
                                                           schedule="constant", channels_last=False), seed=0)
    return predict(v, test.x)


def test_poisons_flip_the_local_model_and_a_transfer_victim_but_the_clean_rows_do_not(task):
    train, val, test, model, _ = task
    a = attack(max_poisons=0.5)  # N_max 30; eps 16/255, 100 steps, layer auto
    p = a.poison(train, np.random.default_rng(0), Reference(model, val, CPU, 0, test))
    r, n = a.report_, p.n_poison
    assert 1 < n <= 30 and r["n_poison_images"] == n and r["local_fits"] == n and r["feature_layer"] == "relu1"
    assert r["per_target"][0]["poisons"] == n and r["per_target"][0]["local_success"]
    assert r["per_target"][0]["discarded_by_ni"] == 0 and r["clean_local_poison_class_targets"] == 0
    assert r["per_target"][0]["feature_distance_end"] < r["per_target"][0]["feature_distance_start"]
    d = p.dataset  # appended, clean label, the originals untouched
    assert len(d) == 60 + n and d.y[60:].tolist() == [1] * n and torch.equal(d.x[:60], train.x)
    assert bool((train.y[p.source_index[60:]] == 1).all()) and p.poison_mask.sum() == n
    # the local model (last layer refitted on frozen features) flips the target only with the last poison
    lin = model.out
    h_tr, h_p, h_t = (head_inputs(model, lin, x, CPU) for x in (train.x, d.x[60:], test.x[:1]))
    y1 = torch.ones(n, dtype=torch.int64)
    head = LocalHead(lin, 2)
    assert int(head.fit(torch.cat([h_tr, h_p]), torch.cat([train.y, y1])).predict(h_t)[0]) == 1
    assert int(head.fit(torch.cat([h_tr, h_p[:-1]]), torch.cat([train.y, y1[:-1]])).predict(h_t)[0]) == 0
    # a transfer victim: the target flips with the poisons, not without them nor with the unperturbed bases
    assert transfer_victim(model, d, test).tolist() == [1] + test.y[1:].tolist()
    assert transfer_victim(model, train, test).tolist() == test.y.tolist()
    bases = Dataset(torch.cat([train.x, train.x[p.source_index[60:]]]), d.y, ["a", "b"])
    assert transfer_victim(model, bases, test)[0] == 0
    # deterministic: the same poisons again
    q = attack(max_poisons=0.5).poison(train, np.random.default_rng(5), Reference(model, val, CPU, 0, test))
    assert torch.equal(q.dataset.x, d.x) and torch.equal(q.source_index, p.source_index)


def test_perturbations_stay_in_the_eps_ball_and_the_pixel_box(task):
    _, val, test, model, protos = task
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 2  # saturated images: many pixels at or near 0 and 1
    sat = Dataset((protos[y] + 0.5 * torch.randn(40, 1, 8, 8, generator=g)).clamp(0, 1), y, ["a", "b"])
    a = attack(max_poisons=0.2, tau_ni=1.0, targets={"select": "rows", "rows": [0, 2]})  # N_max 8 each
    p = a.poison(sat, np.random.default_rng(0), Reference(model, val, CPU, 0, test))
    x, base = p.dataset.x[40:].double(), sat.x[p.source_index[40:]].double()
    delta = x - base
    assert len(x) >= 8 and delta.abs().max() <= EPS and x.min() >= 0 and x.max() <= 1
    assert bool((delta.abs() >= EPS - 1e-6).any())  # the ball is reached ...
    clipped = ((base > 0) & (base < EPS) & (x == 0)) | ((base < 1) & (base > 1 - EPS) & (x == 1))
    assert bool(clipped.any())  # ... and the box cuts it
    assert a.report_["perturbation_linf_max"] <= EPS
    # the float32 bounds base -+ eps can round outside the ball (near 0 by many float steps); not these
    b = torch.cat([torch.rand(20000, generator=g), torch.tensor([0.0, 1.0, 0.1, 0.10000001, 0.9])])
    assert bool(((b + 0.1).double() - b.double() > 0.1).any()) and bool((b.double() - (b - 0.1).double() > 0.1).any())
    lo, hi = ball_bounds(b, 0.1)
    assert lo.dtype == torch.float32 and bool((lo >= 0).all()) and bool((hi <= 1).all())
    assert bool((lo.double() >= b.double() - 0.1).all()) and bool((hi.double() <= b.double() + 0.1).all())
    assert (lo - (b - 0.1).clamp(0, 1)).abs().max() < 1e-6 and (hi - (b + 0.1).clamp(0, 1)).abs().max() < 1e-6


# -- a hand-made network whose feature is the top half of a 4x4 image ----------------------
def top_net():
    """f(x) = half the sum of the top 8 pixels (4 x their mean); the head says class 1 when f > 2."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False), nn.Linear(1, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0, :8] = 0.5
        net[2].weight.copy_(torch.tensor([[-2.0], [2.0]]))
        net[2].bias.copy_(torch.tensor([4.0, -4.0]))
    return net


def images(pairs, labels):
    x = torch.empty(len(pairs), 1, 4, 4)
    for i, (top, bottom) in enumerate(pairs):
        x[i, :, :2], x[i, :, 2:] = top, bottom
    return Dataset(x, torch.tensor(labels), ["a", "b"])


def test_bases_are_taken_nearest_first_in_feature_space_not_pixel_space():
    # class 0 rows at top 0.1 and 0.35: the target (top 0.3) can never be pulled to class 1 here
    tops = [0.9, 0.6, 0.8, 0.65, 0.95, 0.7]
    bottoms = [0.0, 1.0, 0.2, 0.5, 0.1, 0.6]
    train = images([(0.1, 0.5)] * 3 + [(0.35, 0.5)] * 3 + list(zip(tops, bottoms)), [0] * 6 + [1] * 6)
    val = images([(0.1, 0.5), (0.9, 0.5)], [0, 1])
    test = images([(0.3, 0.0)], [0])
    net = top_net()
    a = attack(max_poisons=1.0, tau_ni=1.0)
    p = a.poison(train, np.random.default_rng(0), Reference(net, val, CPU, 0, test))
    feats = feature_map(net, "1")
    with torch.no_grad():
        dist = ((feats(train.x[6:]) - feats(test.x)) ** 2).sum(1)
    pixel = ((train.x[6:] - test.x).reshape(6, -1) ** 2).sum(1)
    assert int(pixel.argmin()) != int(dist.argmin())  # the two orders differ on this data
    src = p.source_index[12:]
    assert int(src[0]) == 6 + int(dist.argmin()) == 7  # top 0.6
    assert src.tolist() == (6 + torch.argsort(dist)).tolist() == [7, 9, 11, 8, 6, 10]
    r = a.report_["per_target"][0]
    assert r == {**r, "poisons": 6, "local_success": False, "discarded_by_ni": 0}
    assert r["feature_distance_start"] == pytest.approx(float(dist.sqrt().mean()), abs=1e-5)
    # each top pixel moved down by eps (the feature falls by 4 eps), the bottom one not at all
    delta = p.dataset.x[12:] - train.x[src]
    assert torch.allclose(delta[:, :, :2], torch.full_like(delta[:, :, :2], -EPS), atol=1e-6)
    assert bool((delta[:, :, 2:] == 0).all())
    assert r["feature_distance_end"] == pytest.approx(r["feature_distance_start"] - 4 * EPS, abs=1e-5)


def ni_task():
    """Class 0 at top 0.1 and 0.3, class 1 at 0.6..0.9; target and a validation row at top 0.4.
    The base at 0.6 moved by eps 0.2 sits on the target: it flips the target and the validation row."""
    train = images([(0.1, 0.5)] * 3 + [(0.3, 0.5)] * 3 + [(0.6, 0.5), (0.7, 0.5), (0.8, 0.5), (0.9, 0.5)],
                   [0] * 6 + [1] * 4)
    val = images([(0.4, 0.0), (0.1, 0.5), (0.9, 0.5)], [0, 0, 1])
    return train, val, images([(0.4, 0.0)], [0])


def test_negative_impact_test_discards_the_candidate_that_costs_validation_accuracy():
    train, val, test = ni_task()
    ref = Reference(top_net(), val, CPU, 0, test)
    allowed = attack(max_poisons=1.0, eps=0.2, tau_ni=0.5)  # a drop of 1/3 is allowed
    p = allowed.poison(train, np.random.default_rng(0), ref)
    assert allowed.report_["per_target"][0] == {**allowed.report_["per_target"][0], "poisons": 1,
                                                "local_success": True, "discarded_by_ni": 0}
    assert p.source_index[10:].tolist() == [6] and allowed.report_["clean_val_accuracy"] == 1.0
    strict = attack(max_poisons=1.0, eps=0.2, tau_ni=0.0)
    p = strict.poison(train, np.random.default_rng(0), ref)
    r = strict.report_["per_target"][0]
    assert r["discarded_by_ni"] == 1 and not r["local_success"] and r["poisons"] == 3
    assert p.source_index[10:].tolist() == [7, 8, 9]  # the flipping base 6 is gone, the rest kept
    assert strict.report_["local_fits"] == 4
    msg = one_line("", attack(max_poisons=0.1, max_candidates=1.0, eps=0.2, tau_ni=0.0).poison, train,
                   np.random.default_rng(0), ref)
    assert msg == ("stingray's negative-impact test discarded all 1 candidate poisons (each lowered the local "
                   "model's validation accuracy by more than attack.tau_ni = 0.0); raise attack.tau_ni")


# -- checks and errors --------------------------------------------------------------------
def test_pipeline_checks_before_training():
    train, _, _ = ni_task()
    rows = Dataset(torch.rand(10, 5), torch.tensor([0, 1] * 5), ["a", "b"])
    a = attack()
    a.check(train)
    a.check_model(top_net())  # images, a torch net with its layer and a last linear: fine
    est = EstimatorModel(LogisticRegression(), 2)
    assert one_line("", a.check_model, est) == (
        "stingray on images crafts poisons in a torch network's feature space; the reference is EstimatorModel, "
        "not a torch network (use a CNN or MLP, or a scikit-learn learner on a feature-space data set)")
    assert one_line("", attack(layer="nope").check_model, top_net()).startswith("model has no layer 'nope'")
    a.check(rows)
    a.check_model(est)  # tabular rows, a scikit-learn learner: fine
    assert one_line("", a.check_model, top_net()) == (
        "stingray retrains local copies of the victim's learner; it needs a scikit-learn learner "
        "(linear-svm, random-forest, logistic-regression, ...), got Sequential")
    assert one_line("", attack(eps=0.1).check, rows) == (
        "attack.eps does not apply to stingray on tabular rows; remove it")
    assert one_line("", attack(max_copied=3).check, train) == "attack.max_copied does not apply to stingray on images; remove it"


def test_one_line_errors():
    train, val, test = ni_task()
    rng = np.random.default_rng(0)
    est = EstimatorModel(LogisticRegression(), 2)
    assert one_line("", attack().poison, train, rng, Reference(est, val, CPU, 0, test)).startswith(
        "stingray on images crafts poisons in a torch network's feature space; the reference is EstimatorModel")
    for bad in (0, -0.1, 1.5):
        assert one_line("", StingRay, eps=bad) == f"attack.eps must be in (0, 1], got {float(bad)}"
    assert StingRay(eps=1).cfg.eps == 1
    assert one_line("", StingRay, steps=0) == "attack.steps must be in 1..100000, got 0"
    msg = one_line("", attack(layer="nope").poison, train, rng, Reference(top_net(), val, CPU, 0, test))
    assert msg.startswith("model has no layer 'nope'") and "layers: " in msg
    for no_val in (None, Dataset(torch.zeros(0, 1, 4, 4), torch.zeros(0), ["a", "b"])):
        assert one_line("", attack().poison, train, rng, Reference(top_net(), no_val, CPU, 0, test)) == (
            "stingray's negative-impact test reads the attacker's clean validation rows; set data.val_fraction > 0")
    squashed = nn.Sequential(*top_net(), nn.Tanh())  # the last linear is not the output
    assert one_line("", attack().poison, train, rng, Reference(squashed, val, CPU, 0, test)).startswith(
        "stingray on images retrains the reference's last nn.Linear, but its output is not the model's output")
    no_linear = nn.Sequential(nn.Conv2d(1, 2, 4), nn.Flatten())
    assert one_line("", attack(layer="0").check_model, no_linear).startswith(
        "stingray on images retrains the last nn.Linear of the reference")
