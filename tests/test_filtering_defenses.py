"""Filtering defenses against planted, known answers: Spectral Signatures (Tran et al. 2018),
Activation Clustering (Chen et al. 2018), the detection metrics, and one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poisonlab.data.base import Dataset
from poisonlab.defenses.activation_clustering import (
    activation_clustering,
    exclusionary_reclassification,
)
from poisonlab.defenses.filtering import (
    FilterResult,
    detection_metrics,
    representations,
)
from poisonlab.defenses.spectral import spectral_signatures
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.subpop.learners import representation


def one_line_error(match: str):
    """``pytest.raises`` for a PoisonlabError whose message matches and is one line."""
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(PoisonlabError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return out
    return _Ctx()


# -- planted data -----------------------------------------------------------------------
def spectral_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes of 200 N(0, I_20) rows plus 10 rows shifted by 10 along one axis each
    (axis 3 in class 0, axis 7 in class 1); rows shuffled. Returns reprs, labels, poison mask."""
    rng = np.random.default_rng(seed)
    xs, ys, ps = [], [], []
    for c, axis in ((0, 3), (1, 7)):
        clean = rng.normal(size=(200, 20))
        planted = rng.normal(size=(10, 20))
        planted[:, axis] += 10.0
        xs += [clean, planted]
        ys += [np.full(210, c)]
        ps += [np.r_[np.zeros(200, bool), np.ones(10, bool)]]
    x, y, p = np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)
    order = rng.permutation(len(y))
    return x[order], y[order], p[order]


def blob_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 0: 270 N(0, I_5) rows and 30 planted rows around (8, ..., 8); class 1: one
    blob of 300 N(0, I_5) rows. Returns reprs, labels, poison mask."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(270, 5)), rng.normal(size=(30, 5)) + 8.0, rng.normal(size=(300, 5))])
    y = np.r_[np.zeros(300, np.int64), np.ones(300, np.int64)]
    poison = np.r_[np.zeros(270, bool), np.ones(30, bool), np.zeros(300, bool)]
    return x, y, poison


# -- detection metrics ------------------------------------------------------------------
def test_detection_metrics_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    poison = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool)
    remove = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 0], bool)
    m = detection_metrics(remove, poison, y, 4)  # class 3 has no rows
    # TP rows 3, 4; FP rows 0, 7; FN row 5; TN rows 1, 2, 6, 8, 9
    assert (m["true_positives"], m["false_positives"], m["false_negatives"], m["true_negatives"]) == (2, 2, 1, 5)
    assert (m["n_rows"], m["n_poison"], m["n_removed"]) == (10, 3, 4)
    assert m["precision"] == 0.5
    assert m["recall"] == m["tpr"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(2 / 7)
    assert m["removed_share"] == 0.4
    np.testing.assert_allclose(m["removed_share_per_class"], [0.5, 0.5, 0.0, np.nan])
    # clean rows: class 0 -> 0, 1, 2 (row 0 removed); class 1 -> 6, 7 (row 7 removed); class 2 -> 8, 9
    np.testing.assert_allclose(m["clean_removed_share_per_class"], [1 / 3, 0.5, 0.0, np.nan])
    np.testing.assert_allclose(m["recall_per_class"], [1.0, 0.5, np.nan, np.nan])


def test_detection_metrics_nan_where_undefined_and_accepts_tensors():
    m = detection_metrics(torch.zeros(4, dtype=torch.bool), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 1, 1, 0]), 2)
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and m["fpr"] == 0.0 and m["removed_share"] == 0.0
    m = detection_metrics([1, 0], [0, 0], [0, 1], 2)  # no poison at all
    assert math.isnan(m["recall"]) and m["precision"] == 0.0 and m["fpr"] == 0.5
    m = detection_metrics([1, 1], [1, 1], [0, 0], 1)  # no clean row
    assert math.isnan(m["fpr"]) and m["precision"] == 1.0
    assert math.isnan(m["clean_removed_share_per_class"][0])


def test_detection_metrics_errors():
    with one_line_error("same length"):
        detection_metrics([1, 0, 0], [0, 1], [0, 1], 2)
    with one_line_error("outside 0..1"):
        detection_metrics([1, 0], [0, 1], [0, 2], 2)
    with one_line_error("num_classes"):
        detection_metrics([1, 0], [0, 1], [0, 0], 0)
    with one_line_error("boolean"):
        detection_metrics([2, 0], [0, 1], [0, 1], 2)


def test_filter_result_shapes():
    r = FilterResult(np.array([0.0, 2.0]), np.array([False, True]))
    assert r.n_removed == 1 and r.keep.tolist() == [True, False] and r.details == {}
    with pytest.raises(ValueError):
        FilterResult(np.zeros(3), np.zeros(2, bool))


# -- spectral signatures ----------------------------------------------------------------
def test_spectral_ranks_planted_rows_first_and_removes_them():
    x, y, poison = spectral_data()
    r = spectral_signatures(x, y, epsilon=10 / 210)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        top10 = idx[np.argsort(-r.scores[idx])[:10]]
        assert set(top10) == set(idx[poison[idx]])  # the planted rows hold the 10 highest scores
        info = r.details["classes"][c]
        assert info["n"] == 210 and info["removed"] == 15  # round(1.5 * 10/210 * 210)
        assert r.remove[idx].sum() == 15
        assert info["threshold"] == r.scores[idx][r.remove[idx]].min()
    m = detection_metrics(r.remove, poison, y, 2)
    assert m["recall"] == 1.0 and m["false_positives"] == 10  # 5 clean rows per class at most
    np.testing.assert_allclose(m["clean_removed_share_per_class"], [5 / 200, 5 / 200])
    # the signature points along the planted axis, sign fixed positive
    d0 = r.details["classes"][0]["direction"]
    assert np.argmax(np.abs(d0)) == 3 and d0[3] > 0.9


def test_spectral_scores_by_hand_ties_by_row_index():
    # one class, 1-D: centred values 0, 2, -2, 0, 2, -2 -> squared projections 0, 4, 4, 0, 4, 4
    x = np.array([[0.0], [2.0], [-2.0], [0.0], [2.0], [-2.0]])
    y = np.zeros(6, np.int64)
    r = spectral_signatures(x, y, epsilon=2 / 9)  # 1.5 * 2/9 * 6 = 2 rows
    np.testing.assert_allclose(r.scores, [0, 4, 4, 0, 4, 4])
    assert r.remove.tolist() == [False, True, True, False, False, False]
    assert r.details["classes"][0]["singular_value"] == pytest.approx(4.0)  # sqrt(4 * 4)


def test_spectral_rounds_half_up_and_skips_degenerate_classes():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(5, 3)), np.ones((4, 3)), rng.normal(size=(1, 3))])
    y = np.r_[np.zeros(5), np.ones(4), np.full(1, 2)].astype(np.int64)
    r = spectral_signatures(x, y, epsilon=1 / 3)  # class 0: 1.5 * 1/3 * 5 = 2.5 -> 3
    assert r.remove[:5].sum() == 3
    assert not r.remove[5:].any() and (r.scores[5:] == 0).all()  # constant class, 1-row class
    assert r.details["classes"][1]["direction"] is None and r.details["classes"][2]["removed"] == 0
    r2 = spectral_signatures(x, y, epsilon=1 / 3, removal_factor=3.0)  # 5 of 5
    assert r2.remove[:5].all()


def test_spectral_is_deterministic():
    x, y, _ = spectral_data(2)
    a, b = spectral_signatures(x, y, 0.05), spectral_signatures(x.copy(), y.copy(), 0.05)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.remove, b.remove)


def test_spectral_errors():
    x, y = np.zeros((4, 2)), np.zeros(4, np.int64)
    for eps in (0, 1, -0.1, 1.5, float("nan")):
        with one_line_error(r"epsilon .* must be in \(0, 1\)"):
            spectral_signatures(x, y, eps)
    for factor in (0, -1.0, float("inf")):
        with one_line_error("removal_factor must be a positive number"):
            spectral_signatures(x, y, 0.1, removal_factor=factor)
    with one_line_error("4 rows but labels have 3"):
        spectral_signatures(x, y[:3], 0.1)
    bad = x.copy()
    bad[2, 1] = np.nan
    with one_line_error("NaN or infinite values in 1 row.*row 2"):
        spectral_signatures(bad, y, 0.1)
    with one_line_error("2-D array"):
        spectral_signatures(np.zeros(4), y, 0.1)
    with one_line_error("integer class indices"):
        spectral_signatures(x, np.full(4, 0.5), 0.1)


# -- activation clustering --------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_activation_clustering_size_rule_flags_the_small_blob_exactly(reduce):
    x, y, poison = blob_data()
    r = activation_clustering(x, y, reduce=reduce)
    assert np.array_equal(r.remove, poison)
    assert np.array_equal(r.scores, poison.astype(float))
    c0, c1 = r.details["classes"][0], r.details["classes"][1]
    assert c0["sizes"] == [270, 30] and c0["relative_size"] == 0.1 and c0["flagged"] and c0["dims"] == 5
    assert not c1["flagged"] and c1["relative_size"] > 0.35  # one blob splits into near halves
    assert np.array_equal(r.details["cluster"][:300], poison[:300].astype(int))  # 1 = the smaller cluster


@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_activation_clustering_silhouette_rule(reduce):
    x, y, poison = blob_data()
    r = activation_clustering(x, y, reduce=reduce, rule="silhouette", silhouette_threshold=0.25)
    c0, c1 = r.details["classes"][0], r.details["classes"][1]
    assert c0["silhouette"] > 0.3 and c1["silhouette"] < 0.2
    assert np.array_equal(r.remove, poison)
    assert not activation_clustering(x, y, reduce=reduce, rule="silhouette", silhouette_threshold=0.95).remove.any()


def test_activation_clustering_small_and_constant_classes_and_dims():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(4, 6)), np.ones((5, 6)), rng.normal(size=(2, 6))])
    y = np.r_[np.zeros(4), np.ones(5), np.full(2, 2)].astype(np.int64)
    r = activation_clustering(x, y, reduce="pca", rule="size", size_threshold=0.3)
    cl = r.details["classes"]
    assert cl[0]["dims"] == 3  # min(10, 6 features, 4 rows - 1)
    assert cl[1]["dims"] == 0 and cl[2]["dims"] == 0  # constant class; class of 2 rows
    assert (r.details["cluster"][4:] == -1).all() and not r.remove[4:].any()


def test_activation_clustering_is_deterministic():
    x, y, _ = blob_data(4)
    a = activation_clustering(x, y, seed=7, rule="silhouette")
    b = activation_clustering(x.copy(), y.copy(), seed=7, rule="silhouette")
    assert np.array_equal(a.remove, b.remove) and np.array_equal(a.details["cluster"], b.details["cluster"])
    assert a.details["classes"][1]["silhouette"] == b.details["classes"][1]["silhouette"]
    # the silhouette is computed only where a rule reads it; the clusters do not depend on the rule
    c = activation_clustering(x, y, seed=7, rule="size")
    assert np.isnan(c.details["classes"][1]["silhouette"]) and np.array_equal(c.details["cluster"], a.details["cluster"])


def test_activation_clustering_errors():
    x, y = np.random.default_rng(0).normal(size=(6, 3)), np.zeros(6, np.int64)
    with one_line_error("dims must be a positive integer"):
        activation_clustering(x, y, dims=0)
    with one_line_error("unknown reduce 'icaa' \\(did you mean 'ica'\\?\\); choose one of ica, pca"):
        activation_clustering(x, y, reduce="icaa")
    with one_line_error("unknown rule 'sizes' \\(did you mean 'size'\\?\\)"):
        activation_clustering(x, y, rule="sizes")
    with one_line_error(r"size_threshold must be in \(0, 1\)"):
        activation_clustering(x, y, size_threshold=1.2)
    with one_line_error(r"silhouette_threshold must be in \[-1, 1\]"):
        activation_clustering(x, y, silhouette_threshold=2)
    with one_line_error("seed must be"):
        activation_clustering(x, y, seed=-1)
    with one_line_error("6 rows but labels have 5"):
        activation_clustering(x, y[:5])
    bad = x.copy()
    bad[0, 0] = np.inf
    with one_line_error("NaN or infinite"):
        activation_clustering(bad, y)


# -- exclusionary reclassification ------------------------------------------------------
def test_exclusionary_reclassification_by_hand():
    # own label 3 predicted l times, most common other class p times; legitimate iff l > threshold * p
    assert exclusionary_reclassification(np.array([3, 3, 3, 1, 2]), 3) == (False, 0.6)  # l=3, p=1
    assert exclusionary_reclassification(np.array([3, 3, 1, 1, 1]), 3) == (True, 0.4)   # l=2, p=3
    assert exclusionary_reclassification(np.array([3, 3, 1, 1]), 3) == (True, 0.5)      # tie is poison
    assert exclusionary_reclassification(np.array([3, 3, 1, 1]), 3, threshold=0.5) == (False, 0.5)
    assert exclusionary_reclassification(np.array([3, 3, 1, 2, 0]), 3) == (False, 0.4)  # l=2 beats p=1
    assert exclusionary_reclassification(torch.tensor([3, 3]), 3) == (False, 1.0)       # p = 0
    assert exclusionary_reclassification(np.array([1, 1, 1]), 3) == (True, 0.0)


def test_exclusionary_reclassification_errors():
    with one_line_error("empty"):
        exclusionary_reclassification(np.array([], np.int64), 0)
    with one_line_error("1-D array of predicted classes"):
        exclusionary_reclassification(np.array([0.5, 1.0]), 0)
    with one_line_error("threshold must be a non-negative number"):
        exclusionary_reclassification(np.array([0, 1]), 0, threshold=-1)
    with one_line_error("cluster_label must be a class index"):
        exclusionary_reclassification(np.array([0, 1]), "a")


# -- representations --------------------------------------------------------------------
def test_representations_match_subpop_representation_in_batches():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 2, {"hidden": [3]})
    x = torch.randn(5, 4)
    whole = representation(model, x, "auto")
    got = representations(model, Dataset(x, torch.zeros(5), ["a", "b"]), batch_size=2)
    assert got.shape == (5, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, whole)
    np.testing.assert_allclose(representations(model, x, layer=None), x.double().numpy())
    with one_line_error("batch_size must be a positive integer"):
        representations(model, x, batch_size=0)
    with one_line_error("x is empty"):
        representations(model, x[:0])


# -- validation rules (thresholds read off a clean validation split) ---------------------
def half_poisoned_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class 0: 200 clean N(0, I_6) rows and 240 planted rows around 6 * e_0 (the poisons are
    the *majority*); class 1: 300 clean rows. Clean validation: 100 rows of each class from the
    clean distribution. Returns reprs, labels, poison mask, val reprs, val labels."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(scale=0.5, size=(240, 6))
    planted[:, 0] += 6.0
    x = np.concatenate([rng.normal(size=(200, 6)), planted, rng.normal(size=(300, 6))])
    y = np.r_[np.zeros(440, np.int64), np.ones(300, np.int64)]
    poison = np.r_[np.zeros(200, bool), np.ones(240, bool), np.zeros(300, bool)]
    xv = rng.normal(size=(200, 6))
    yv = np.r_[np.zeros(100, np.int64), np.ones(100, np.int64)]
    return x, y, poison, xv, yv


def test_validation_threshold_by_hand():
    from poisonlab.defenses.spectral import validation_threshold

    scores = np.array([0.01, 0.01, 0.04, 0.04, 0.09, 0.09, 0.25, 0.25, 1.0, 1.0])
    assert validation_threshold(scores, 0.2) == 0.25  # k = 2 scores may exceed: the 8th smallest
    assert validation_threshold(scores, 0.0) == 1.0  # none may exceed: the largest
    assert validation_threshold(scores, 0.15) == 1.0  # floor(1.5) = 1: the 9th smallest


def test_spectral_validation_rule_by_hand():
    # one feature: the direction is +-1 and the score is (r - validation mean) ** 2
    val = np.array([-1.0, -0.5, -0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 0.5, 1.0])[:, None]  # mean 0
    x = np.array([0.0, 0.4, -0.45, 10.0, 11.0])[:, None]
    r = spectral_signatures(x, np.zeros(5, np.int64), rule="validation", val_reprs=val,
                            val_labels=np.zeros(10, np.int64), false_removal_rate=0.2)
    assert np.allclose(r.scores, [0.0, 0.16, 0.2025, 100.0, 121.0])
    assert r.remove.tolist() == [False, False, False, True, True]  # threshold 0.25: the 8th smallest val score
    info = r.details["classes"][0]
    assert info["threshold"] == pytest.approx(0.25) and info["removed"] == 2 and info["n_val"] == 10
    assert r.details["rule"] == "validation"


def test_spectral_validation_rule_finds_majority_poison_that_the_budget_rule_misses():
    x, y, poison, xv, yv = half_poisoned_data()
    budget = spectral_signatures(x, y, epsilon=0.5)  # even the true rate: the class mean lies between the groups
    m_budget = detection_metrics(budget.remove, poison, y, 2)
    r = spectral_signatures(x, y, rule="validation", val_reprs=xv, val_labels=yv, false_removal_rate=0.05)
    m = detection_metrics(r.remove, poison, y, 2)
    assert m["recall"] == 1.0  # every planted row
    assert m["clean_removed_share_per_class"][0] <= 0.12 and m["clean_removed_share_per_class"][1] <= 0.12
    assert m_budget["recall"] < 0.9 or m_budget["clean_removed_share_per_class"][0] > 0.5


def test_activation_clustering_validation_rule_flags_the_larger_poison_cluster():
    x, y, poison, xv, yv = half_poisoned_data()
    size_rule = activation_clustering(x, y, reduce="pca", rule="size")
    assert not size_rule.remove[poison].any()  # the poison cluster is the larger one: the size rule misses it
    for reduce in ("pca", "ica"):
        r = activation_clustering(x, y, reduce=reduce, rule="validation", val_reprs=xv, val_labels=yv)
        assert np.array_equal(r.remove, poison), reduce
        c0, c1 = r.details["classes"][0], r.details["classes"][1]
        assert c0["flagged"] and c0["flagged_cluster"] == 0 and c0["sizes"] == [240, 200]
        assert c0["val_shares"][0] < 0.05 and not c1["flagged"] and c1["flagged_cluster"] == -1


def test_validation_rules_leave_classes_with_too_few_validation_rows_alone():
    x, y, _poison, xv, yv = half_poisoned_data()
    few = np.r_[np.flatnonzero(yv == 0)[:9], np.flatnonzero(yv == 1)]  # 9 validation rows of class 0
    ss = spectral_signatures(x, y, rule="validation", val_reprs=xv[few], val_labels=yv[few])
    assert not ss.remove[y == 0].any() and "9 validation rows" in ss.details["classes"][0]["note"]
    ac = activation_clustering(x, y, reduce="pca", rule="validation", val_reprs=xv[few], val_labels=yv[few])
    assert not ac.remove[y == 0].any() and "9 validation rows" in ac.details["classes"][0]["warnings"][0]


def test_validation_rule_errors():
    x, y, _, xv, yv = half_poisoned_data()
    with one_line_error("rule 'validation' needs the clean validation rows"):
        spectral_signatures(x, y, rule="validation")
    with one_line_error("rule 'validation' needs the clean validation rows"):
        activation_clustering(x, y, rule="validation")
    with one_line_error(r"unknown rule 'validate' \(did you mean 'validation'\?\)"):
        spectral_signatures(x, y, rule="validate")
    with one_line_error(r"false_removal_rate must be in \[0, 1\)"):
        spectral_signatures(x, y, rule="validation", val_reprs=xv, val_labels=yv, false_removal_rate=1.0)
    with one_line_error(r"validation_ratio must be in \(0, 1\]"):
        activation_clustering(x, y, rule="validation", val_reprs=xv, val_labels=yv, validation_ratio=0)
    with one_line_error("val_reprs have 5 features but reprs have 6"):
        spectral_signatures(x, y, rule="validation", val_reprs=xv[:, :5], val_labels=yv)
    with one_line_error("val_reprs have 5 features but reprs have 6"):
        activation_clustering(x, y, rule="validation", val_reprs=xv[:, :5], val_labels=yv)


def test_filter_defense_configs_validate_the_validation_keys():
    from poisonlab.defenses import DEFENSES

    with one_line_error(r"defense.false_removal_rate must be a number in \[0, 1\)"):
        DEFENSES.get("spectral-signatures").from_config({"rule": "validation", "false_removal_rate": 1.5})
    with one_line_error(r"defense.validation_ratio must be a number in \(0, 1\]"):
        DEFENSES.get("activation-clustering").from_config({"rule": "validation", "validation_ratio": 2})
    with one_line_error("rule"):
        DEFENSES.get("spectral-signatures").from_config({"rule": "silhouette"})


def test_validation_rules_in_a_run_read_the_clean_validation_split(tmp_path):
    """Digits BadNet (every digit -> 0, p = 0.1); the validation-rule filters run inside the
    experiment: the recorded per-class thresholds come from the validation split's rows."""
    from poisonlab.config import load_config
    from poisonlab.experiment import run_experiment

    cfg = load_config(None, ["train.epochs=3", "output.plots=false", f"output.dir={tmp_path}",
                             "attack={name: badnets, p: 0.1, trigger: {kind: pattern, margin: 0}}",
                             ("defenses=[{name: spectral-signatures, rule: validation, false_removal_rate: 0.05}, "
                              "{name: activation-clustering, reduce: pca, rule: validation}]")], device="cpu")
    m = run_experiment(cfg).metrics
    ss, ac = m["defenses"]["spectral-signatures"], m["defenses"]["activation-clustering"]
    n_val = m["data"]["validation"]
    assert sum(c["n_val"] for c in ss["per_class"].values()) == n_val
    assert sum(c["n_val"] for c in ac["per_class"].values()) == n_val
    # a 3-epoch digits model on ~13 validation rows per class: most poisons, few clean rows
    assert ss["detection"]["recall"] >= 0.7 and ss["target_class_clean_removed"] <= 0.15
    assert ac["detection"]["recall"] >= 0.6 and ac["target_class_clean_removed"] <= 0.05
    assert [c for c, info in ac["per_class"].items() if info["flagged"]] == [0]


def test_validation_rule_without_a_validation_split_is_a_one_line_error(tmp_path):
    from poisonlab.config import load_config
    from poisonlab.experiment import run_experiment

    cfg = load_config(None, ["train.epochs=1", "output.plots=false", f"output.dir={tmp_path}", "data.val_fraction=0",
                             "attack={name: badnets, p: 0.1}",
                             "defenses=[{name: spectral-signatures, rule: validation}]"], device="cpu")
    with one_line_error("val_fraction > 0"):
        run_experiment(cfg)


def test_a_filter_that_removes_nothing_does_not_retrain():
    from poisonlab.defenses import DEFENSES, FilterContext

    x, y, poison = blob_data()
    data = Dataset(torch.from_numpy(x).float(), torch.from_numpy(y), ["a", "b"])
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    calls: list[int] = []

    def retrain(ds: Dataset, name: str) -> torch.nn.Module:
        calls.append(len(ds))
        return model

    ctx = FilterContext(data, torch.from_numpy(poison), retrain, 0)
    spec = DEFENSES.get("activation-clustering")
    ctx = ctx.with_model(model)
    out = spec.run(spec.from_config({"reduce": "pca", "size_threshold": 0.01}), ctx)  # flags nothing
    assert calls == [] and out.extra["n_removed"] == 0 and out.extra["retrained"] is False
    assert all(torch.equal(a, b) for a, b in zip(out.model.state_dict().values(), model.state_dict().values()))
    out = spec.run(spec.from_config({"reduce": "pca", "size_threshold": 0.49}), ctx)
    assert len(calls) == 1 and calls[0] == 600 - out.extra["n_removed"] and out.extra["retrained"] is True


def _linear_retrain(ds: Dataset, name: str) -> torch.nn.Module:
    """A deterministic full-batch logistic regression (the victim of the exclusionary tests)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(ds.x.shape[1], 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(ds.x), ds.y).backward()
        opt.step()
    return m


def test_exclusionary_reclassification_keeps_a_legitimate_cluster_and_drops_the_poison():
    """Class 0: 270 rows at 0 and 30 poisons at (8, ..., 8) labelled 0 that look like class 1;
    class 1: 270 rows at 8 and a legitimate small mode of 30 rows at 12. The size rule flags
    both small clusters; retrained without each, the model calls the poisons 1 (poison) and
    the far mode 1 (its own label: kept)."""
    from poisonlab.defenses import DEFENSES, FilterContext

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(270, 5)), rng.normal(size=(30, 5)) + 8.0,
                        rng.normal(size=(270, 5)) + 8.0, rng.normal(size=(30, 5)) + 12.0])
    y = np.r_[np.zeros(300, np.int64), np.ones(300, np.int64)]
    poison = np.r_[np.zeros(270, bool), np.ones(30, bool), np.zeros(300, bool)]
    data = Dataset(torch.from_numpy(x).float(), torch.from_numpy(y), ["a", "b"])
    identity = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(5, 2))  # representations = the inputs
    calls: list[int] = []

    def retrain(ds: Dataset, name: str) -> torch.nn.Module:
        calls.append(len(ds))
        return _linear_retrain(ds, name)

    ctx = FilterContext(data, torch.from_numpy(poison), retrain, 0)
    spec = DEFENSES.get("activation-clustering")
    ctx = ctx.with_model(identity)
    plain = spec.run(spec.from_config({"reduce": "pca"}), ctx)
    assert plain.extra["n_removed"] == 60 and calls == [540]  # both small clusters, one final retraining
    calls.clear()
    out = spec.run(spec.from_config({"reduce": "pca", "exclusionary": True}), ctx)
    assert calls == [570, 570, 570]  # without class 0's cluster, without class 1's, then the final retraining
    assert out.extra["detection"]["recall"] == 1.0 and out.extra["n_removed"] == 30
    c0, c1 = out.extra["per_class"][0], out.extra["per_class"][1]
    assert c0["exclusionary"]["poison"] and c0["exclusionary"]["own_label_share"] == 0.0 and c0["flagged"]
    assert not c1["exclusionary"]["poison"] and c1["exclusionary"]["own_label_share"] == 1.0 and not c1["flagged"]
    with one_line_error("defense.exclusionary_threshold must be >= 0"):
        spec.from_config({"exclusionary": True, "exclusionary_threshold": -1})
