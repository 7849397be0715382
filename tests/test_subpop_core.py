"""Core of the subpopulation attack (Jagielski et al., CCS 2021): planted, hand-computed answers."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from poisonlab.errors import PoisonlabError
from poisonlab.subpop import (
    Subpopulation,
    accuracy_on,
    attacker_split,
    collateral,
    damage_on,
    feature_match,
    fit_cluster_match,
    label_flip_poisons,
    least_likely_label,
    membership,
    poison_count,
    target_damage,
    worst_k_summary,
)
from poisonlab.subpop import metrics as sp_metrics
from poisonlab.subpop import poisons as sp_poisons
from poisonlab.subpop import subpopulations as sp_subpops
from poisonlab.subpop import threat as sp_threat


@pytest.mark.parametrize("module", [sp_metrics, sp_poisons, sp_subpops, sp_threat])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- metrics
# 8 test rows; the first four form the subpopulation.
Y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
CLEAN = np.array([0, 1, 0, 0, 0, 1, 1, 1])     # wrong: rows 3, 6
POISONED = np.array([1, 0, 0, 1, 0, 0, 1, 0])  # wrong: rows 0, 1, 5, 6, 7
MEMBER = np.array([True, True, True, True, False, False, False, False])
# per-row (poisoned wrong - clean wrong): [1, 1, 0, -1 | 0, 1, 0, 1]
TARGET = (1 + 1 + 0 - 1) / 4   # 0.25
COLLAT = (0 + 1 + 0 + 1) / 4   # 0.5


def test_target_and_collateral_hand_computed():
    assert target_damage(CLEAN, POISONED, Y, MEMBER) == TARGET
    assert collateral(CLEAN, POISONED, Y, MEMBER) == COLLAT
    # target damage = clean accuracy - poisoned accuracy on the subpopulation
    assert accuracy_on(CLEAN, Y, MEMBER) == 0.75
    assert accuracy_on(POISONED, Y, MEMBER) == 0.5
    assert accuracy_on(CLEAN, Y, MEMBER) - accuracy_on(POISONED, Y, MEMBER) == TARGET
    assert accuracy_on(POISONED, Y, ~MEMBER) == 0.25   # rows 5, 6, 7 wrong
    # torch inputs give the same numbers
    t = torch.from_numpy
    assert target_damage(t(CLEAN), t(POISONED), t(Y), t(MEMBER)) == TARGET
    assert collateral(t(CLEAN), t(POISONED), t(Y), t(MEMBER)) == COLLAT
    # no change -> no damage
    assert target_damage(CLEAN, CLEAN, Y, MEMBER) == 0.0


def test_metrics_empty_mask_is_nan():
    none = np.zeros(8, dtype=bool)
    assert math.isnan(target_damage(CLEAN, POISONED, Y, none))
    assert math.isnan(accuracy_on(CLEAN, Y, none))
    assert math.isnan(collateral(CLEAN, POISONED, Y, ~none))
    assert damage_on(CLEAN, POISONED, Y, ~none) == (TARGET * 4 + COLLAT * 4) / 8


def test_metrics_errors():
    with pytest.raises(PoisonlabError, match="mask must be a boolean array"):
        target_damage(CLEAN, POISONED, Y, MEMBER.astype(int))
    with pytest.raises(PoisonlabError, match=r"mask has shape \(4,\) but there are 8 test rows"):
        collateral(CLEAN, POISONED, Y, MEMBER[:4])
    with pytest.raises(PoisonlabError, match="1-D of one length"):
        target_damage(CLEAN, POISONED[:7], Y, MEMBER)
    with pytest.raises(PoisonlabError, match="1-D of one length"):
        accuracy_on(CLEAN, Y[:5], MEMBER)


# ----------------------------------------------------------------- worst_k_summary
def _row(sid, alpha, target, coll):
    return {"subpop_id": sid, "alpha": alpha, "target": target, "collateral": coll}


def test_worst_k_summary_hand_computed():
    rows = [
        _row("a", 0.5, 0.4, 0.1), _row("a", 0.5, 0.2, 0.1),  # two trials -> a: target 0.3, coll 0.1
        _row("b", 0.5, 0.2, 0.0),
        _row("c", 0.5, 0.6, 0.3),
        _row("z", 0.5, float("nan"), 0.2),                    # not ranked, but counts in collateral_all
        _row("b", 1.0, 0.5, 0.15), _row("a", 1.0, 0.5, 0.05),  # tie on target -> a first
    ]
    out = worst_k_summary(rows, ks=(1, 2, 5))
    assert [(r["alpha"], r["k"], r["k_used"], r["n_subpops"]) for r in out] == [
        (0.5, 1, 1, 3), (0.5, 2, 2, 3), (0.5, 5, 3, 3),
        (1.0, 1, 1, 2), (1.0, 2, 2, 2), (1.0, 5, 2, 2)]
    ap = pytest.approx
    coll_all_05 = (0.1 + 0.0 + 0.3 + 0.2) / 4
    assert out[0]["target_worst_k"] == ap(0.6) and out[0]["collateral_worst_k"] == ap(0.3)
    assert out[1]["target_worst_k"] == ap(0.45) and out[1]["collateral_worst_k"] == ap(0.2)
    assert out[2]["target_worst_k"] == ap((0.6 + 0.3 + 0.2) / 3)
    assert out[2]["collateral_worst_k"] == ap((0.3 + 0.1 + 0.0) / 3)
    assert all(r["collateral_all"] == ap(coll_all_05) for r in out[:3])
    assert out[3]["target_worst_k"] == ap(0.5) and out[3]["collateral_worst_k"] == ap(0.05)
    assert out[4]["collateral_worst_k"] == ap(0.1) and out[4]["collateral_all"] == ap(0.1)
    assert worst_k_summary([]) == []


def test_worst_k_summary_errors():
    with pytest.raises(PoisonlabError, match="row 0 lacks key\\(s\\) collateral"):
        worst_k_summary([{"subpop_id": "a", "alpha": 1, "target": 0.1}])
    with pytest.raises(PoisonlabError, match="every k in ks must be a positive integer, got 0"):
        worst_k_summary([_row("a", 1, 0.1, 0.0)], ks=(1, 0))


# ---------------------------------------------------------------------- feature_match
# 12 test rows: (HS,W,F) x4, (HS,B,F) x2, (BA,W,M) x3, (BA,B,M) x1, (HS,W,M) x2
META_TEST = {
    "education": np.array(["HS", "HS", "BA", "HS", "BA", "HS", "BA", "BA", "HS", "HS", "HS", "HS"], dtype=object),
    "race":      np.array(["W",  "B",  "W",  "W",  "W",  "B",  "B",  "W",  "W",  "W",  "W",  "W"], dtype=object),
    "sex":       np.array(["F",  "F",  "M",  "F",  "M",  "F",  "M",  "M",  "M",  "F",  "M",  "F"], dtype=object),
    "age":       np.arange(12),
}
# attacker: (HS,W,F) x1, (HS,B,F) x2, (BA,B,M) x1, (HS,W,M) x1, none of (BA,W,M)
META_ATT = {
    "education": np.array(["HS", "HS", "HS", "BA", "HS"]),
    "race":      np.array(["W",  "B",  "B",  "B",  "W"]),
    "sex":       np.array(["F",  "F",  "F",  "M",  "M"]),
}
FEATS = ["education", "race", "sex"]


def test_feature_match_bounds_and_rows():
    subs = feature_match(META_ATT, META_TEST, FEATS, min_test=2, max_test=3)
    # test counts in [2, 3]: (HS,B,F)=2, (BA,W,M)=3, (HS,W,M)=2; (BA,W,M) has no attacker rows
    assert [s.description for s in subs] == ["education=HS, race=B, sex=F", "education=HS, race=W, sex=M"]
    assert [(s.test_count, s.attacker_count) for s in subs] == [(2, 2), (2, 1)]
    assert all(s.kind == "feature" for s in subs)
    assert np.flatnonzero(membership(subs[0], META_TEST)).tolist() == [1, 5]
    assert np.flatnonzero(membership(subs[1], META_TEST)).tolist() == [8, 10]
    assert np.flatnonzero(membership(subs[0], META_ATT)).tolist() == [1, 2]
    assert np.flatnonzero(membership(subs[1], META_ATT)).tolist() == [4]

    with_empty = feature_match(META_ATT, META_TEST, FEATS, min_test=2, max_test=3, min_attacker=0)
    assert [s.description for s in with_empty] == [
        "education=BA, race=W, sex=M", "education=HS, race=B, sex=F", "education=HS, race=W, sex=M"]
    assert np.flatnonzero(membership(with_empty[0], META_TEST)).tolist() == [2, 4, 7]

    # bounds are inclusive on both ends
    only4 = feature_match(META_ATT, META_TEST, FEATS, min_test=4, max_test=4)
    assert [s.description for s in only4] == ["education=HS, race=W, sex=F"]
    assert np.flatnonzero(membership(only4[0], META_TEST)).tolist() == [0, 3, 9, 11]
    assert feature_match(META_ATT, META_TEST, FEATS, min_test=5, max_test=100) == []

    # one feature, no upper bound; ids are unique and readable
    by_sex = feature_match(META_ATT, META_TEST, ["sex"], min_test=0, max_test=None)
    assert [(s.id, s.test_count, s.attacker_count) for s in by_sex] == [
        ("feature:sex=F", 6, 3), ("feature:sex=M", 6, 2)]
    assert int(membership(by_sex[0], META_TEST).sum()) + int(membership(by_sex[1], META_TEST).sum()) == 12


def test_feature_match_deterministic_and_numeric_values():
    a = feature_match(META_ATT, META_TEST, FEATS, min_test=1, max_test=None)
    b = feature_match(META_ATT, META_TEST, FEATS, min_test=1, max_test=None)
    assert a == b and [s.description for s in a] == sorted(s.description for s in a)
    meta = {"k": np.array([2, 1, 2, 2])}
    subs = feature_match(meta, meta, ["k"], min_test=1, max_test=None)
    assert [s.description for s in subs] == ["k=1", "k=2"]
    assert membership(subs[1], meta).tolist() == [True, False, True, True]


def test_feature_match_errors():
    with pytest.raises(PoisonlabError,
                       match="unknown feature 'eduction' in test metadata \\(did you mean 'education'\\?\\)"):
        feature_match(META_ATT, META_TEST, ["eduction", "sex"])
    with pytest.raises(PoisonlabError, match="unknown feature 'age' in attacker metadata"):
        feature_match(META_ATT, META_TEST, ["age"])
    with pytest.raises(PoisonlabError, match="min_test=50 is larger than max_test=10"):
        feature_match(META_ATT, META_TEST, FEATS, min_test=50, max_test=10)
    with pytest.raises(PoisonlabError, match="min_test must be >= 0, got -1"):
        feature_match(META_ATT, META_TEST, FEATS, min_test=-1)
    with pytest.raises(PoisonlabError, match="max_test must be >= 0, got -5"):
        feature_match(META_ATT, META_TEST, FEATS, min_test=0, max_test=-5)
    with pytest.raises(PoisonlabError, match="at least one feature name"):
        feature_match(META_ATT, META_TEST, [])
    with pytest.raises(PoisonlabError, match="feature names repeat"):
        feature_match(META_ATT, META_TEST, ["sex", "sex"])
    with pytest.raises(PoisonlabError, match="different lengths"):
        feature_match(META_ATT, {"sex": np.array(["F"]), "race": np.array(["W", "B"])}, ["sex", "race"])
    sub = feature_match(META_ATT, META_TEST, FEATS, min_test=4, max_test=4)[0]
    with pytest.raises(PoisonlabError, match="unknown feature 'education' in row metadata"):
        membership(sub, {"sex": np.array(["F"])})
    with pytest.raises(PoisonlabError, match="feature-based; pass the rows' metadata dict"):
        membership(sub)
    cluster_sub = Subpopulation("cluster:0", "cluster", "cluster 0", cluster=0)
    with pytest.raises(PoisonlabError, match="is a cluster; pass clusters="):
        membership(cluster_sub, META_TEST)


# ---------------------------------------------------------------------- ClusterMatch
def _blobs(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three tight blobs in 6-D, 20 apart along different axes."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((3, 6))
    centers[1, 0] = 20.0
    centers[2, 3] = 20.0
    x = np.concatenate([c + 0.3 * rng.standard_normal((n_per, 6)) for c in centers])
    return x, np.repeat(np.arange(3), n_per)


def test_cluster_match_separates_blobs_and_is_seeded():
    x, blob = _blobs(30, seed=1)
    cm = fit_cluster_match(x, n_clusters=3, pca_dims=2, seed=0)
    a = cm.assign(x)
    per_blob = [set(a[blob == b].tolist()) for b in range(3)]
    assert all(len(s) == 1 for s in per_blob)                 # each blob in one cluster
    assert len(set().union(*per_blob)) == 3                   # different clusters
    assert cm.attacker_counts.tolist() == [30, 30, 30]
    assert cm.components.shape == (2, 6) and cm.centroids.shape == (3, 2)

    again = fit_cluster_match(x, n_clusters=3, pca_dims=2, seed=0)
    assert np.array_equal(again.assign(x), a)
    assert np.array_equal(again.centroids, cm.centroids)

    # fresh test rows from the same blobs land in their blob's cluster
    xt, bt = _blobs(4, seed=2)
    at = cm.assign(torch.from_numpy(xt).float())
    assert all(set(at[bt == b].tolist()) == per_blob[b] for b in range(3))

    subs = cm.subpopulations(xt[:10], min_test=1)   # 4 + 4 + 2 test rows per blob
    assert sorted(s.test_count for s in subs) == [2, 4, 4]
    assert [s.attacker_count for s in subs] == [30, 30, 30]
    assert [s.cluster for s in subs] == sorted(s.cluster for s in subs)
    assert all(s.kind == "cluster" and s.description == f"cluster {s.cluster}" and s.id == f"cluster:{s.cluster}"
               for s in subs)
    small = cm.subpopulations(xt[:10], min_test=1, max_test=3)
    assert len(small) == 1 and small[0].cluster == per_blob[2].pop() and small[0].test_count == 2
    assert np.flatnonzero(cm.membership(small[0], xt[:10])).tolist() == [8, 9]
    assert np.flatnonzero(membership(small[0], clusters=cm.assign(xt))).tolist() == [8, 9, 10, 11]


def test_cluster_match_raw_features_and_images():
    x, blob = _blobs(10, seed=3)
    raw = fit_cluster_match(x, n_clusters=3, pca_dims=None, seed=5)
    assert raw.components is None and raw.centroids.shape == (3, 6)
    a = raw.assign(x)
    assert all(len(set(a[blob == b].tolist())) == 1 for b in range(3)) and len(set(a.tolist())) == 3
    assert np.array_equal(fit_cluster_match(x, 3, 0, seed=5).assign(x), a)
    imgs = torch.from_numpy(x).float().reshape(30, 1, 2, 3)   # image-shaped rows are flattened
    ci = fit_cluster_match(imgs, n_clusters=3, pca_dims=2, seed=0)
    b = ci.assign(imgs)
    assert all(len(set(b[blob == k].tolist())) == 1 for k in range(3))


def test_cluster_match_errors():
    x, _ = _blobs(3, seed=0)   # 9 rows, 6 features
    with pytest.raises(PoisonlabError, match="n_clusters=10 is more than the 9 attacker rows"):
        fit_cluster_match(x, n_clusters=10)
    with pytest.raises(PoisonlabError, match="pca_dims=7 exceeds the 6 features"):
        fit_cluster_match(x, n_clusters=2, pca_dims=7)
    with pytest.raises(PoisonlabError, match="pca_dims must be >= 0 or None, got -1"):
        fit_cluster_match(x, n_clusters=2, pca_dims=-1)
    with pytest.raises(PoisonlabError, match="n_clusters must be >= 1"):
        fit_cluster_match(x, n_clusters=0)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(PoisonlabError, match="contains NaN or infinite values"):
        fit_cluster_match(bad, n_clusters=2)
    with pytest.raises(PoisonlabError, match="one row per example"):
        fit_cluster_match(np.arange(5.0), n_clusters=2)
    cm = fit_cluster_match(x, n_clusters=2, pca_dims=2)
    with pytest.raises(PoisonlabError, match="representation has 5 features but the clustering was fit on 6"):
        cm.assign(x[:, :5])
    with pytest.raises(PoisonlabError, match="contains NaN"):
        cm.assign(bad)
    with pytest.raises(PoisonlabError, match="min_test=3 is larger than max_test=1"):
        cm.subpopulations(x, min_test=3, max_test=1)


# ---------------------------------------------------------------------------- poisons
@pytest.mark.parametrize("alpha,n,expected", [
    (0.5, 4, 2), (0.5, 5, 3), (0.5, 7, 4),   # halves round up (Python's round(2.5) would give 2)
    (1.0, 5, 5), (2.0, 5, 10), (2.0, 7, 14), (0.3, 5, 2), (0.1, 4, 0), (1.5, 3, 5),
])
def test_poison_count_and_labels(alpha, n, expected):
    assert poison_count(alpha, n) == expected
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    xp, yp, rows = label_flip_poisons(x, alpha, 1, np.random.default_rng(0), num_classes=2)
    assert len(xp) == len(yp) == len(rows) == expected
    assert yp.dtype == np.int64 and (yp == 1).all()
    assert rows.dtype == np.int64 and ((rows >= 0) & (rows < n)).all()
    assert np.array_equal(xp, x[rows])


def test_poisons_tensors_texts_and_seeding():
    imgs = torch.rand(6, 1, 4, 4)
    xp, yp, rows = label_flip_poisons(imgs, 2.0, 3, rng=7, num_classes=10)
    assert isinstance(xp, torch.Tensor) and xp.shape == (12, 1, 4, 4)
    assert yp.dtype == torch.int64 and yp.tolist() == [3] * 12
    assert torch.equal(xp, imgs[torch.from_numpy(rows)])
    # drawn with replacement: 100 draws from 100 rows repeat some (a permutation would not)
    big_rows = label_flip_poisons(np.arange(100)[:, None], 1.0, 0, rng=0)[2]
    assert len(big_rows) == 100 and len(set(big_rows.tolist())) < 100
    # same seed -> same rows
    assert np.array_equal(label_flip_poisons(imgs, 2.0, 3, rng=7)[2], rows)
    texts = np.array(["good film", "bad film", "ok"], dtype=object)
    tp, ty, trows = label_flip_poisons(texts, 1.0, 0, np.random.default_rng(1))
    assert tp.dtype == object and tp.tolist() == texts[trows].tolist() and ty.tolist() == [0, 0, 0]
    lp, _, lrows = label_flip_poisons(["a", "b"], 1.0, 0, rng=0)
    assert lp.tolist() == [["a", "b"][i] for i in lrows]


def test_least_likely_label():
    probs = np.array([[0.6, 0.3, 0.1],
                      [0.2, 0.1, 0.7],
                      [0.5, 0.2, 0.3]])   # column means: 0.433, 0.2, 0.367
    assert least_likely_label(probs) == 1
    assert least_likely_label(torch.tensor([[0.9, 0.1], [0.8, 0.2]])) == 1
    assert least_likely_label(np.array([[0.5, 0.5]])) == 0   # tie -> smaller index


def test_poison_errors():
    x = np.zeros((4, 2))
    with pytest.raises(PoisonlabError, match="alpha must be > 0"):
        label_flip_poisons(x, 0.0, 1, rng=0)
    with pytest.raises(PoisonlabError, match="alpha must be > 0"):
        label_flip_poisons(x, -0.5, 1, rng=0)
    with pytest.raises(PoisonlabError, match="alpha must be > 0"):
        label_flip_poisons(x, float("nan"), 1, rng=0)
    with pytest.raises(PoisonlabError, match="no attacker rows to copy"):
        label_flip_poisons(np.zeros((0, 2)), 1.0, 1, rng=0)
    with pytest.raises(PoisonlabError, match="no attacker rows to copy"):
        label_flip_poisons(torch.zeros(0, 1, 4, 4), 1.0, 1, rng=0)
    with pytest.raises(PoisonlabError, match=r"label 2 is out of range; use a class index in 0\.\.1"):
        label_flip_poisons(x, 1.0, 2, rng=0, num_classes=2)
    with pytest.raises(PoisonlabError, match="label -1 is out of range"):
        label_flip_poisons(x, 1.0, -1, rng=0)
    with pytest.raises(PoisonlabError, match="label must be an integer class index"):
        label_flip_poisons(x, 1.0, 1.0, rng=0)
    with pytest.raises(PoisonlabError, match="num_classes must be >= 1"):
        label_flip_poisons(x, 1.0, 0, rng=0, num_classes=0)
    with pytest.raises(PoisonlabError, match="non-empty \\(rows, classes\\) array"):
        least_likely_label(np.array([0.2, 0.8]))
    with pytest.raises(PoisonlabError, match="non-empty \\(rows, classes\\) array"):
        least_likely_label(np.zeros((0, 3)))
    with pytest.raises(PoisonlabError, match="probs contains NaN"):
        least_likely_label(np.array([[np.nan, 1.0]]))


# ---------------------------------------------------------------------- threat model
def test_attacker_split_disjoint_covering_seeded():
    victim, attacker = attacker_split(10, 0.3, seed=0)
    assert len(attacker) == 3 and len(victim) == 7
    assert np.intersect1d(victim, attacker).size == 0
    assert np.array_equal(np.sort(np.concatenate([victim, attacker])), np.arange(10))
    assert np.array_equal(victim, np.sort(victim)) and np.array_equal(attacker, np.sort(attacker))
    v2, a2 = attacker_split(10, 0.3, seed=0)
    assert np.array_equal(v2, victim) and np.array_equal(a2, attacker)
    _, a_big0 = attacker_split(100, 0.5, seed=0)
    _, a_big1 = attacker_split(100, 0.5, seed=1)
    assert len(a_big0) == 50 and not np.array_equal(a_big0, a_big1)
    assert len(attacker_split(5, 0.5, seed=0)[1]) == 3   # floor(2.5 + 0.5)


def test_attacker_split_stratified():
    y = np.array([0] * 60 + [1] * 40)
    victim, attacker = attacker_split(100, 0.25, seed=3, y=y)
    assert np.bincount(y[attacker]).tolist() == [15, 10]
    assert np.array_equal(np.sort(np.concatenate([victim, attacker])), np.arange(100))
    # 5/5/5 rows, fraction 0.5 -> 8 attacker rows: 2 each plus the 2 owed to classes 0 and 1
    y3 = torch.tensor([0, 1, 2] * 5)
    _, a3 = attacker_split(15, 0.5, seed=0, y=y3)
    assert len(a3) == 8 and np.bincount(y3.numpy()[a3]).tolist() == [3, 3, 2]


def test_attacker_split_errors():
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(PoisonlabError, match=r"attacker_fraction must be in \(0, 1\)"):
            attacker_split(10, bad, seed=0)
    with pytest.raises(PoisonlabError, match="leaves the attacker part empty"):
        attacker_split(3, 0.1, seed=0)
    with pytest.raises(PoisonlabError, match="leaves the victim part empty"):
        attacker_split(3, 0.9, seed=0)
    with pytest.raises(PoisonlabError, match="n_rows must be a positive integer"):
        attacker_split(0, 0.5, seed=0)
    with pytest.raises(PoisonlabError, match="seed must be a non-negative integer"):
        attacker_split(10, 0.5, seed=-1)
    with pytest.raises(PoisonlabError, match=r"y must have shape \(10,\)"):
        attacker_split(10, 0.5, seed=0, y=np.zeros(9))
