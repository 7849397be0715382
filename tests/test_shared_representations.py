"""Defenses of one victim read its representations once (issue 12): Spectral Signatures and
Activation Clustering share one forward pass; a changed model, data set or layer is a miss;
and the fast routes of the linear algebra give the same answers as the exact ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonlab.data.base import Dataset
from poisonlab.defend import run_defenses
from poisonlab.defenses import DefenseInputs, filter_defenses
from poisonlab.defenses.activation_clustering import _CovariancePCA, _dims_used
from poisonlab.defenses.filter_defenses import ActivationClusteringConfig, SpectralConfig, shared_representations
from poisonlab.defenses.spectral import top_singular_direction
from poisonlab.models import build_model


def _setup():
    torch.manual_seed(0)
    model = build_model("mlp", (6,), 2, {"hidden": [8]})
    x = torch.randn(120, 6)
    train = Dataset(x, (x[:, 0] > 0).long(), ["a", "b"])
    val = Dataset(torch.randn(40, 6), torch.randint(0, 2, (40,)), ["a", "b"])
    return model, train, val


def test_spectral_and_activation_clustering_share_one_pass(monkeypatch):
    model, train, val = _setup()
    calls: list[int] = []
    real = filter_defenses.representations
    monkeypatch.setattr(filter_defenses, "representations", lambda m, x, *a: calls.append(len(x)) or real(m, x, *a))
    mask = torch.zeros(len(train), dtype=torch.bool)
    context = DefenseInputs(train, mask, lambda data, name: model, None, val)
    defenses = [("ss", SpectralConfig(rule="validation")), ("ac-pca", ActivationClusteringConfig(reduce="pca")),
                ("ac-val", ActivationClusteringConfig(reduce="pca", rule="validation"))]
    evaluate = lambda m, name: {"clean_accuracy": 1.0}
    run_defenses(defenses, model, val, None, None, evaluate, 0, "cpu", {"clean_accuracy": 1.0}, context=context)
    assert calls == [120, 40]  # the training rows once, the validation rows once, for three defenses


def test_a_changed_model_or_data_misses():
    model, train, val = _setup()
    ctx = DefenseInputs(train, None, None, None, val, model=model)
    first = shared_representations(ctx, model, train, "auto", 64)
    assert shared_representations(ctx, model, train, "auto", 64) is first
    assert shared_representations(ctx, model, train, "input", 64) is not first  # another layer
    with torch.no_grad():
        model.fc1.weight.mul_(2)  # in place: same object, new version
    again = shared_representations(ctx, model, train, "auto", 64)
    assert again is not first and not np.array_equal(again, first)
    train.x.add_(1)  # the data changed in place
    assert shared_representations(ctx, model, train, "auto", 64) is not again
    handle = model.fc1.register_forward_hook(lambda m, i, o: o * 0)  # a mask-like hook changes the function
    assert not np.array_equal(shared_representations(ctx, model, train, "auto", 64), again)
    handle.remove()


@pytest.mark.parametrize("rows", [50, 4000])
def test_top_singular_direction_matches_the_svd(rows):
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 20)) * np.linspace(3, 0.1, 20)
    x -= x.mean(0)
    v, s = top_singular_direction(x)  # 4000 rows: the Gram route
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    ref = vt[0] if vt[0][np.argmax(abs(vt[0]))] > 0 else -vt[0]
    assert np.allclose(v, ref, atol=1e-12) and s == pytest.approx(sv[0], rel=1e-12)
    assert v[np.argmax(np.abs(v))] > 0


def test_dims_used_matches_the_exact_rank():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(500, 30))
    assert _dims_used(full - full.mean(0), 10) == 10
    low = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 30))  # rank 4
    low -= low.mean(0)
    assert _dims_used(low, 10) == np.linalg.matrix_rank(low) == 4
    assert _dims_used(np.zeros((500, 30)), 10) == 0
    assert _dims_used(full[:5] - full[:5].mean(0), 10) == 4  # n - 1 caps it


def test_covariance_pca_equals_scikit_learns_covariance_eigh():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    centred = x - x.mean(0)
    ours = _CovariancePCA(centred).use(5)
    ref = PCA(n_components=5, svd_solver="covariance_eigh").fit(centred)
    assert np.allclose(ours.components_, ref.components_, atol=1e-10)  # signs included
    assert np.allclose(ours.transform(centred), ref.transform(centred), atol=1e-9)
    held_out = rng.normal(size=(7, 12))
    assert np.allclose(ours.transform(held_out), ref.transform(held_out), atol=1e-9)
    assert np.allclose(ours.singular_values_[:5], ref.singular_values_, rtol=1e-10)
