"""StingRay (feature-space targeted poisoning): poisons appended as copies of the nearest rows of
the poison class with some of the target's larger features copied in, the first-success stop,
N_max, the negative-impact test, determinism, registration, and a one-line error per bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from poisonlab.attacks import ATTACKS
from poisonlab.data.base import Dataset
from poisonlab.models.estimators import EstimatorModel
from poisonlab.pipeline.context import Reference
from poisonlab.targeted.stingray import StingRay
from one_line_errors import one_line

CPU = torch.device("cpu")


def ds(rows, labels, meta=None):
    return Dataset(torch.tensor(rows, dtype=torch.float32), torch.tensor(labels), ["a", "b"], meta or {})


def ref(est, train, val, test, seed=0):
    model = EstimatorModel(est, 2).fit_arrays(train.x, train.y, 2, seed)
    return Reference(model, val, CPU, seed, test)


def attack(**kw):
    return StingRay(**{"poison_class": 1, "targets": {"select": "rows", "rows": [0]}, **kw})


# -- a learner that never predicts the poison class: the order of the bases, N_max ----------
T = [3.0, 3.0, 0.0, 0.0, 2.0]
BASES = {  # row: (features, squared distance to T, features where T is larger)
    1: ([0, 3, 1, 0, 0], 14, [0, 4]),
    3: ([3, 0, 0, 5, 2], 34, [1]),
    4: ([2, 2, 0, 0, 2], 2, [0, 1]),
    6: ([0, 0, 0, 0, 0], 22, [0, 1, 4]),
    7: ([5, 5, 5, 5, 5], 67, []),  # T is larger nowhere: nothing to copy, never fitted
}
NEAREST = [4, 1, 6, 3]


def ordered_data():
    rows, labels = [], []
    for i in range(10):
        if i in BASES:
            rows.append(BASES[i][0])
            labels.append(1)
        else:
            rows.append([-i, -i, -i, -i, -i])
            labels.append(0)
    train = ds(rows, labels, {"id": np.arange(10) * 10})
    val = ds([[0, 0, 0, 0, 0], [9, 9, 9, 9, 9]], [0, 1])
    return train, val, ds([T, [1, 1, 1, 1, 1]], [0, 1])


def never_flips():
    return DummyClassifier(strategy="constant", constant=0)


def test_bases_are_the_nearest_rows_of_the_poison_class_and_take_the_target_larger_features():
    train, val, test = ordered_data()
    for i, (row, dist, gap) in BASES.items():  # the hand-made table is right
        assert sum((a - b) ** 2 for a, b in zip(row, T)) == dist
        assert [f for f in range(5) if T[f] > row[f]] == gap
    a = attack(max_poisons=1.0, max_copied=2, tau_ni=0.0)
    res = a.poison(train, np.random.default_rng(0), ref(never_flips(), train, val, test))
    assert res.source_index[10:].tolist() == NEAREST  # nearest first; row 7 had nothing to copy
    x = res.dataset.x[10:]
    assert x[0].tolist() == T  # row 4 with features 0 and 1 copied: the target itself
    assert x[1].tolist() == [3, 3, 1, 0, 2]  # row 1 with features 0 and 4
    assert x[3].tolist() == [3, 3, 0, 5, 2]  # row 3 with feature 1
    changed = (x[2] != train.x[6]).nonzero().flatten().tolist()  # row 6: 2 of its 3 gap features
    assert len(changed) == 2 and set(changed) <= {0, 1, 4}
    assert x[2][changed].tolist() == torch.tensor(T)[changed].tolist()
    for k, b in enumerate(NEAREST):  # only gap features change, at most max_copied of them
        diff = set((x[k] != train.x[b]).nonzero().flatten().tolist())
        assert diff <= set(BASES[b][2]) and len(diff) <= 2
    r = a.report_
    assert r["per_target"] == [{"poisons": 4, "local_success": False, "discarded_by_ni": 0}]
    assert r["local_fits"] == 4 and r["n_poison_images"] == 4 and r["n_max_per_target"] == 10
    assert r["features_changed_mean"] == pytest.approx((2 + 2 + 2 + 1) / 4)
    assert r["clean_val_accuracy"] == 0.5


def test_poisons_are_appended_rows_of_the_poison_class_with_their_sources():
    train, val, test = ordered_data()
    before = train.x.clone(), train.y.clone()
    res = attack(max_poisons=1.0, tau_ni=0.0).poison(train, np.random.default_rng(0),
                                                      ref(never_flips(), train, val, test))
    d = res.dataset
    assert len(d) == 14 and res.n_poison == 4
    assert res.poison_mask.tolist() == [False] * 10 + [True] * 4
    assert res.source_index.tolist() == list(range(10)) + NEAREST
    assert torch.equal(d.x[:10], before[0]) and torch.equal(d.y[:10], before[1])  # originals kept
    assert torch.equal(train.x, before[0]) and len(train) == 10  # the input is not modified
    assert d.y[10:].tolist() == [1, 1, 1, 1]
    assert d.meta["id"].tolist() == list(range(0, 100, 10)) + [40, 10, 60, 30]  # the sources' metadata
    assert d.x.dtype == torch.float32 and d.classes == ["a", "b"]


def test_stops_at_n_max_per_target_when_success_is_impossible():
    train, val, test = ordered_data()
    test = ds([T, [1, 1, 1, 1, 1], [4, 0, 0, 0, 0]], [0, 1, 0])
    # floor(0.29 * 10) = 2 poisons per target, not round(2.9) = 3
    a = attack(max_poisons=0.29, tau_ni=0.0, targets={"select": "rows", "rows": [0, 2]})
    res = a.poison(train, np.random.default_rng(0), ref(never_flips(), train, val, test))
    r = a.report_
    assert r["n_max_per_target"] == 2 and r["n_poison_images"] == 4 and r["local_fits"] == 4
    assert r["per_target"] == [{"poisons": 2, "local_success": False, "discarded_by_ni": 0}] * 2
    # target (4,0,0,0,0): row 4 (squared distance 12), row 6 (16), then rows 1 (26) and 3 (30)
    assert res.source_index[10:].tolist() == [4, 1, 4, 6]
    assert res.dataset.x[12:].tolist() == [[4, 2, 0, 0, 2], [4, 0, 0, 0, 0]]
    b = attack(max_poisons=0.01, tau_ni=0.0)  # floor(0.1) = 0, but at least one poison
    b.poison(train, np.random.default_rng(0), ref(never_flips(), train, val, test))
    assert b.report_["n_max_per_target"] == 1 and b.report_["n_poison_images"] == 1


# -- a binary-feature problem where four poisons flip logistic regression -----------------
def binary_data():
    rows0 = [[1, 1, 0, 0, 0, 0, 0]] * 8 + [[1, 0, 0, 0, 0, 0, 1]] * 2  # feature 6: rare, class 0 only
    rows1 = [[0, 0, 0, 0, 1, 1, 0]] * 8 + [[0, 0, 1, 0, 1, 0, 0]] * 2
    train = ds(rows0 + rows1, [0] * 10 + [1] * 10)
    val = ds([[1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1, 0]],
             [0, 0, 1, 1])
    test = ds([[0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1, 0]],
              [0, 0, 0, 1])
    return train, val, test


def lr():
    return LogisticRegression(C=1.0)


def fit_lr(x, y):
    return EstimatorModel(lr(), 2).fit_arrays(x, y, 2, 0)


def test_flips_a_logistic_regression_target_and_stops_at_the_first_success():
    train, val, test = binary_data()
    t = test.x[:1]
    poison = torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.float32)  # a class-1 row plus feature 6
    flips = []
    for k in range(6):  # the oracle: k copies of the poison, fitted by hand
        m = fit_lr(torch.cat([train.x, poison.repeat(k, 1)]), torch.cat([train.y, torch.ones(k, dtype=torch.int64)]))
        flips.append(int(m(t).argmax(1)))
    assert flips == [0, 0, 0, 0, 1, 1]  # the fourth poison is the first that flips the target
    reference = ref(lr(), train, val, test)
    a = attack(max_poisons=0.25)  # N_max = 5, default tau_ni 0.01
    res = a.poison(train, np.random.default_rng(0), reference)
    r = a.report_
    assert r["per_target"] == [{"poisons": 4, "local_success": True, "discarded_by_ni": 0}]
    assert r["local_fits"] == 4 and r["n_poison_images"] == 4 and r["clean_val_accuracy"] == 1.0
    assert res.source_index[20:].tolist() == [10, 11, 12, 13]  # all at Hamming distance 3: row order
    assert torch.equal(res.dataset.x[20:], poison.repeat(4, 1))
    victim = fit_lr(res.dataset.x, res.dataset.y)
    assert int(victim(t).argmax(1)) == 1  # the retrained victim gives the target the poison class
    assert (victim(val.x).argmax(1) == val.y).all()  # and stays right on the clean validation rows
    assert int(reference.model(t).argmax(1)) == 0  # the attack retrained copies, not the reference
    ev = a.evaluation_set(test)
    assert ev.rows.tolist() == [0] and ev.target.tolist() == [1] and ev.true.tolist() == [0]


def test_same_seed_same_poisons():
    train, val, test = binary_data()

    def run(seed):
        a = attack(max_poisons=0.2, max_copied=1, targets={"select": "rows", "rows": [1, 2]})
        res = a.poison(train, np.random.default_rng(seed), ref(lr(), train, val, test))
        return res, a.report_

    (r1, rep1), (r2, rep2) = run(3), run(3)
    assert torch.equal(r1.dataset.x, r2.dataset.x) and torch.equal(r1.source_index, r2.source_index)
    for key in ("n_poison_images", "local_fits", "per_target"):
        assert rep1[key] == rep2[key]
    assert rep1["n_poison_images"] >= 2
    assert (r1.dataset.x[20:] != train.x[r1.source_index[20:]]).sum(1).tolist() == [1] * rep1["n_poison_images"]
    # the copied feature is drawn at random: other seeds pick others
    assert len({tuple(run(s)[0].dataset.x[20:].flatten().tolist()) for s in range(6)}) > 1


# -- the negative-impact test on a 1-nearest-neighbour learner ------------------------------
def knn_data(second_val=False):
    #        c0 (class 0)   far (class 0)   b1 (class 1)  b2 (class 1)
    train = ds([[8, 10], [-20, -20], [10, 7], [6, 11.5]], [0, 0, 1, 1])
    # v = (9.2, 9.6): nearest c0 (1.26) but candidate b1 + target's feature 1 = (10, 10) is nearer (0.89)
    val = [[9.2, 9.6], [-20, -19]]
    if second_val:  # (10.3, 11.3): nearest c0 (2.64), but b2 + feature 0 = (10, 11.5) is nearer (0.36)
        val.append([10.3, 11.3])
    return train, ds(val, [0] * len(val)), ds([[10, 10]], [0])  # target: c0 at 2, b1 at 3, b2 at 4.27


def knn():
    return KNeighborsClassifier(n_neighbors=1)


def test_negative_impact_discards_candidates_that_lower_validation_accuracy():
    train, val, test = knn_data()
    a = attack(max_poisons=1.0, tau_ni=0.0)
    res = a.poison(train, np.random.default_rng(0), ref(knn(), train, val, test))
    r = a.report_
    # (10, 10) costs v: discarded; (10, 11.5) keeps v right and is nearer the target (1.5) than c0
    assert r["per_target"] == [{"poisons": 1, "local_success": True, "discarded_by_ni": 1}]
    assert r["local_fits"] == 2 and r["clean_val_accuracy"] == 1.0
    assert res.source_index[4:].tolist() == [3] and res.dataset.x[4:].tolist() == [[10, 11.5]]
    # a drop of 0.5 is allowed by tau_ni 1 (and by 0.5: the drop must exceed it): the nearest base is kept
    for tau in (1.0, 0.5):
        b = attack(max_poisons=1.0, tau_ni=tau)
        res = b.poison(train, np.random.default_rng(0), ref(knn(), train, val, test))
        assert b.report_["per_target"] == [{"poisons": 1, "local_success": True, "discarded_by_ni": 0}]
        assert res.source_index[4:].tolist() == [2] and res.dataset.x[4:].tolist() == [[10, 10]]
    # both candidates cost a validation row: nothing is kept, and the error says why
    train, val, test = knn_data(second_val=True)
    msg = one_line("", attack(max_poisons=1.0, tau_ni=0.3).poison, train, np.random.default_rng(0),
                   ref(knn(), train, val, test))
    assert msg == ("stingray's negative-impact test discarded all 2 candidate poisons (each lowered the local "
                   "model's validation accuracy by more than attack.tau_ni = 0.3); raise attack.tau_ni")


# -- registration and errors ------------------------------------------------------------
def test_registered_as_a_targeted_attack():
    cls = ATTACKS.get("stingray")
    assert cls is StingRay and cls.family == "targeted" and cls.appends
    a = cls.from_config({"name": "stingray", "poison_class": 1, "max_copied": 3})
    assert a.get_params()["max_copied"] == 3 and a.get_params()["max_poisons"] == 0.005


def test_one_line_errors():
    train, val, test = binary_data()
    rng = np.random.default_rng(0)
    images = Dataset(torch.rand(6, 1, 3, 3), torch.tensor([0, 1] * 3), ["a", "b"])
    assert one_line("", attack().poison, images, rng, None) == (
        "stingray copies features of tabular rows, or moves images in a torch network's feature space; the data "
        "set has inputs of shape (1, 3, 3) and no torch network is given (use a torch model for images, or a "
        "feature-space data set)")
    msg = one_line("", attack().poison, train, rng, Reference(nn.Linear(7, 2), val, CPU, 0, test))
    assert msg == ("stingray retrains local copies of the victim's learner; it needs a scikit-learn learner "
                   "(linear-svm, random-forest, logistic-regression, ...), got Linear")
    for no_val in (None, Dataset(torch.zeros(0, 7), torch.zeros(0), ["a", "b"])):
        assert one_line("", attack().poison, train, rng, ref(lr(), train, no_val, test)) == (
            "stingray's negative-impact test reads the attacker's clean validation rows; set data.val_fraction > 0")
    zero_target = ds([[0] * 7], [0])  # larger than no base anywhere
    assert one_line("", attack().poison, train, rng, ref(lr(), train, val, zero_target)) == (
        "stingray found no row of the poison class to copy a target feature into")
    for bad in (0, 1.5, -0.1):
        one_line(r"^attack\.max_poisons must be in \(0, 1\], got ", StingRay, max_poisons=bad)
    assert one_line("", StingRay, max_copied=0) == "attack.max_copied must be in 1..1000000 (features), got 0"
    assert one_line("", StingRay, max_copied=2.5) == "config key 'attack.max_copied' must be an integer, got 2.5"
    assert one_line("", StingRay, tau_ni=2) == "attack.tau_ni must be in [0, 1], got 2.0"
    one_line(r"^attack\.tau_ni must be in \[0, 1\], got -0\.5$", StingRay, tau_ni=-0.5)
    one_line(r"^attack\.poison_class 2 is out of range; the data set has classes 0\.\.1$",
             StingRay(poison_class=2).poison, train, rng, ref(lr(), train, val, test))


def test_candidates_tried_are_capped_at_max_candidates_times_n_max():
    train, val, test = knn_data()
    n_max = int(np.floor(0.25 * len(train)))
    assert n_max == 1
    # one candidate allowed: the nearest one is discarded by the negative-impact test, none is left to try
    msg = one_line("", attack(max_poisons=0.25, tau_ni=0.0, max_candidates=1.0).poison, train,
                   np.random.default_rng(0), ref(knn(), train, val, test))
    assert msg.startswith("stingray's negative-impact test discarded all 1 candidate poisons")
    a = attack(max_poisons=0.25, tau_ni=0.0, max_candidates=2.0)  # two: the second is kept and succeeds
    a.poison(train, np.random.default_rng(0), ref(knn(), train, val, test))
    assert a.report_["local_fits"] == 2 and a.report_["per_target"][0]["discarded_by_ni"] == 1
    assert one_line("", StingRay, max_candidates=0.5) == "attack.max_candidates must be in [1, 1000] (times N_max), got 0.5"
