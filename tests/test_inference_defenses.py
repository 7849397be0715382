"""STRIP (Gao et al. 2019) and Neural Cleanse (Wang et al. 2019) on tiny BadNets-backdoored models:
detection numbers on a planted backdoor, hand-computed thresholds and anomaly indices,
determinism, and one-line errors for bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.attacks import BadNets
from poisonlab.data.base import Dataset
from poisonlab.defenses.neural_cleanse import (
    MAD_CONSTANT,
    NeuralCleanseResult,
    anomaly_indices,
    neural_cleanse,
    reverse_engineer_trigger,
)
from poisonlab.defenses.strip import (
    StripResult,
    detection_summary,
    fit_threshold,
    run_strip,
    strip_detect,
    strip_entropy,
)
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.train import TrainConfig, predict, train_model

TARGET = 0


def separable6(n: int, seed: int) -> Dataset:
    """16x16 grey images of 6 classes: class k has a bright 5x4 block in cell (k // 3, k % 3) of a
    2x3 grid in the top 12 rows; the bottom-right corner (BadNets' trigger) stays free.

    Six labels rather than tiny_data.separable's three: with three norms the MAD is the
    distance between two of them, too coarse for Neural Cleanse's outlier test.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 6
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    for k in range(6):
        r, c = divmod(k, 3)
        x[y == k, :, 1 + 6 * r:6 + 6 * r, 1 + 5 * c:5 + 5 * c] += 0.8
    return Dataset(x, y, list("abcdef"))


def _backdoor(model_name: str, options: dict | None, p: float, cfg: TrainConfig, seed: int):
    attack = BadNets.from_config({"p": p, "target": TARGET, "trigger": {"kind": "pattern"}})
    poisoned = attack.poison(separable6(240, 1), np.random.default_rng(seed))
    torch.manual_seed(seed)
    model = build_model(model_name, (1, 16, 16), 6, options)
    train_model(model, poisoned.dataset, cfg, seed=seed)
    test = separable6(120, 2)
    return model, attack, test, attack.evaluation_set(test)


@pytest.fixture(scope="module")
def backdoored(one_thread):
    """A linear softmax classifier (mlp with no hidden layer) with a BadNets 3x3 pattern backdoor
    to label 0 (p = 0.2), plus clean test data and the triggered test set.

    Linear on purpose for STRIP: its logits on a blend are the blend of the logits, so a blend
    of two clean classes is genuinely ambiguous (high entropy), the regime the paper relies on.
    A tiny CNN on these toy blocks learns a dominance order between classes, and whole clean
    classes then keep a low entropy under blending (an artefact of the toy data).
    """
    return _backdoor("mlp", {"hidden": []}, 0.2, TrainConfig(epochs=40, batch_size=16, lr=0.05), seed=0)


@pytest.fixture(scope="module")
def backdoored_cnn(one_thread):
    """The BadNets MNIST CNN with the same kind of backdoor (p = 0.3)."""
    return _backdoor("badnet-mnist", None, 0.3, TrainConfig(epochs=15, batch_size=16, lr=0.1), seed=0)


def _attack_works(model: nn.Module, test: Dataset, attack_set) -> None:
    assert float((predict(model, test.x) == test.y).float().mean()) >= 0.95
    assert float(attack_set.success(predict(model, attack_set.x)).float().mean()) >= 0.9


def test_the_backdoors_are_planted(backdoored, backdoored_cnn):
    for model, _, test, attack_set in (backdoored, backdoored_cnn):
        _attack_works(model, test, attack_set)


# -- STRIP ----------------------------------------------------------------------------------
def test_strip_flags_triggered_inputs_with_a_clean_fitted_threshold(backdoored):
    model, _, test, attack_set = backdoored
    _attack_works(model, test, attack_set)
    pool, held_out = separable6(60, 3).x, separable6(120, 4).x
    clean = strip_entropy(model, test.x, pool)
    triggered = strip_entropy(model, attack_set.x, pool)
    assert triggered.mean() < 0.6 * clean.mean()  # the trigger survives the blend: low entropy

    threshold = fit_threshold(strip_entropy(model, held_out, pool), frr=0.05)
    assert triggered.mean() < threshold < clean.mean()
    summary = detection_summary(np.concatenate([strip_detect(triggered, threshold), strip_detect(clean, threshold)]),
                                np.r_[np.ones(len(triggered), bool), np.zeros(len(clean), bool)])
    assert summary["tpr"] >= 0.9
    assert summary["fpr"] <= 0.15  # near the 5% asked for, on clean data the threshold never saw
    assert summary["n_triggered"] == len(triggered) and summary["n_clean"] == len(clean)

    result = run_strip(model, torch.cat([attack_set.x, test.x]), pool, held_out, frr=0.05)
    assert isinstance(result, StripResult)
    assert result.threshold == pytest.approx(threshold)
    assert np.array_equal(result.flags, result.entropies < result.threshold)
    assert result.summary(np.r_[np.ones(len(triggered), bool), np.zeros(len(clean), bool)])["tpr"] >= 0.9


class _MeanLogit(nn.Module):
    """Two-class logits (0, 3 * mean(x)): entropies computable by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), 3 * m], 1)


def _bits(m: float) -> float:
    p = 1 / (1 + math.exp(3 * m))
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_strip_entropy_is_the_mean_entropy_in_bits_of_the_blends():
    x = torch.cat([torch.full((1, 1, 4, 4), 0.2), torch.zeros(1, 1, 4, 4)])
    pool = torch.full((3, 1, 4, 4), 0.6)  # every overlay alike: the draw cannot matter
    got = strip_entropy(_MeanLogit(), x, pool, n_overlays=5)  # 5 > 3: drawn with replacement
    assert got == pytest.approx([_bits(0.4), _bits(0.3)])  # (0.2 + 0.6) / 2, (0 + 0.6) / 2
    got = strip_entropy(_MeanLogit(), x, pool, n_overlays=2, alpha=0.25, batch_size=1)
    assert got == pytest.approx([_bits(0.75 * 0.2 + 0.25 * 0.6), _bits(0.25 * 0.6)])
    assert strip_entropy(_MeanLogit(), torch.full((1, 1, 4, 4), 0.5), torch.full((2, 1, 4, 4), -0.5)) == \
        pytest.approx([1.0])  # logits (0, 0): exactly one bit


def test_fit_threshold_is_the_frr_quantile_of_clean_entropies():
    assert fit_threshold([3.0, 1.0, 2.0, 5.0, 4.0], frr=0.25) == pytest.approx(2.0)
    # linear interpolation: position 0.05 * 9 = 0.45 between the sorted values 1 and 2
    assert fit_threshold(np.arange(1.0, 11.0), frr=0.05) == pytest.approx(1.45)
    assert fit_threshold(torch.tensor([0.5, 0.7]), frr=0.5) == pytest.approx(0.6)
    flags = strip_detect(np.array([0.1, 1.45, 2.0]), 1.45)
    assert flags.tolist() == [True, False, False]  # strictly below the threshold


def test_detection_summary_by_hand():
    s = detection_summary([True, True, False, True, False], [True, True, True, False, False])
    assert s == {"tpr": pytest.approx(2 / 3), "fpr": pytest.approx(0.5), "n_triggered": 3, "n_clean": 2,
                 "n_flagged": 3}
    assert math.isnan(detection_summary([False], [False])["tpr"])


def test_strip_is_deterministic_under_a_seed(backdoored):
    model, _, test, _ = backdoored
    pool = separable6(60, 3)  # a Dataset is accepted too
    a = strip_entropy(model, test.x[:30], pool, n_overlays=8, seed=7)
    assert np.array_equal(a, strip_entropy(model, test.x[:30], pool.x, n_overlays=8, seed=7, batch_size=5))
    assert not np.array_equal(a, strip_entropy(model, test.x[:30], pool, n_overlays=8, seed=8))


# -- Neural Cleanse -------------------------------------------------------------------------
def _on_trigger(mask: torch.Tensor, attack) -> float:
    """How many times denser a reverse-engineered mask is on the planted trigger's 3x3 pixels than off them."""
    region = attack.trigger.mask((1, 16, 16)) > 0
    return float(mask[region].mean() / mask[~region].mean())


@pytest.mark.parametrize("which", ["backdoored", "backdoored_cnn"])
def test_neural_cleanse_recovers_the_target_label(which, request):
    model, attack, _, _ = request.getfixturevalue(which)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    result = neural_cleanse(model, separable6(60, 5).x, 6, steps=100, lam=0.01, batch_size=32)
    assert isinstance(result, NeuralCleanseResult)
    assert int(np.argmin(result.norms)) == TARGET
    assert result.norms[TARGET] < 0.3 * np.median(result.norms)
    assert result.anomaly[TARGET] > 2 and result.flagged[0] == TARGET
    assert result.success[TARGET] >= 0.9
    assert _on_trigger(result.masks[TARGET], attack) >= 10  # the mask sits on the planted trigger
    assert result.masks.shape == (6, 16, 16) and result.patterns.shape == (6, 1, 16, 16)
    assert np.allclose(result.norms, result.masks.sum((1, 2)).numpy())
    assert np.allclose(result.anomaly, anomaly_indices(result.norms))
    # the suspect model is untouched: same weights, its .grad left alone, eval mode as left by training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert not model.training


def test_anomaly_indices_by_hand():
    norms = np.array([10.0, 40.0, 44.0, 50.0, 52.0, 60.0])
    # median = (44 + 50) / 2 = 47; |norm - 47| = 37, 7, 3, 3, 5, 13 -> sorted 3, 3, 5, 7, 13, 37: MAD = 6
    expected = np.array([37.0, 7.0, 3.0, -3.0, -5.0, -13.0]) / (1.4826 * 6)
    assert MAD_CONSTANT == 1.4826
    assert anomaly_indices(norms) == pytest.approx(expected)
    assert anomaly_indices(norms)[0] == pytest.approx(4.1594, abs=1e-4)
    assert anomaly_indices(torch.tensor(norms)) == pytest.approx(expected)
    # MAD = 0 (most norms equal): the limit, 0 at the median and +-inf off it
    assert anomaly_indices([5.0, 5.0, 5.0, 1.0, 9.0]).tolist() == [0.0, 0.0, 0.0, math.inf, -math.inf]


def test_reverse_engineering_is_deterministic_under_a_seed(backdoored):
    model, _, _, _ = backdoored
    x = separable6(24, 5).x
    m1, p1, s1 = reverse_engineer_trigger(model, x, 1, steps=5, seed=3, batch_size=8)
    m2, p2, s2 = reverse_engineer_trigger(model, x, 1, steps=5, seed=3, batch_size=8)
    assert torch.equal(m1, m2) and torch.equal(p1, p2) and s1 == s2
    assert m1.shape == (16, 16) and p1.shape == (1, 16, 16) and 0 <= s1 <= 1
    assert float(m1.min()) > 0 and float(m1.max()) < 1  # sigmoid-parameterised
    m3, _, _ = reverse_engineer_trigger(model, x, 1, steps=5, seed=4, batch_size=8)
    assert not torch.equal(m1, m3)


# -- errors -----------------------------------------------------------------------------------
def _one_line_error(match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(PoisonlabError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_errors_are_one_line_and_say_what_to_fix():
    model = _MeanLogit()
    img, pool = torch.rand(4, 1, 4, 4), torch.rand(6, 1, 4, 4)
    for frr in (0.0, 1.0, -0.1, 1.5):
        _one_line_error(r"frr .* must be in \(0, 1\)", fit_threshold, [0.1, 0.2], frr)
        _one_line_error(r"frr .* must be in \(0, 1\)", run_strip, model, img, pool, img, frr=frr)
    _one_line_error("at least one clean input", fit_threshold, [], 0.1)
    _one_line_error("non-finite", fit_threshold, [0.1, float("nan")], 0.1)
    _one_line_error("n_overlays must be a whole number >= 1", strip_entropy, model, img, pool, n_overlays=0)
    _one_line_error("non-empty clean pool", strip_entropy, model, img, pool[:0])
    _one_line_error(r"x must be images \(N, C, H, W\)", strip_entropy, model, torch.rand(4, 16), pool)
    _one_line_error(r"clean_pool must be images", strip_entropy, model, img, torch.rand(6, 16))
    _one_line_error("same shape", strip_entropy, model, img, torch.rand(6, 1, 5, 5))
    _one_line_error(r"alpha .* must be in \(0, 1\)", strip_entropy, model, img, pool, alpha=1.0)
    _one_line_error("seed must be a whole number >= 0", strip_entropy, model, img, pool, seed=-1)
    _one_line_error("flags but", detection_summary, [True], [True, False])

    net = build_model("mlp", (1, 4, 4), 3, {"hidden": []})
    _one_line_error("steps must be a whole number >= 1", reverse_engineer_trigger, net, img, 0, steps=0)
    _one_line_error("steps must be a whole number >= 1", neural_cleanse, net, img, 3, steps=0)
    _one_line_error(r"x_clean must be images \(N, C, H, W\)", neural_cleanse, net, torch.rand(4, 16), 3)
    _one_line_error("got 0", reverse_engineer_trigger, net, img[:0], 0)
    _one_line_error("target 3 is out of range", reverse_engineer_trigger, net, img, 3, steps=1)
    _one_line_error("lam .* must be >= 0", neural_cleanse, net, img, 3, lam=-1.0)
    _one_line_error("num_classes >= 2", neural_cleanse, net, img, 1)
    _one_line_error("seed must be a whole number >= 0", neural_cleanse, net, img, 3, seed=-1)
    _one_line_error("at least one label", anomaly_indices, [])
