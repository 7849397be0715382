"""Trainer: learns, is deterministic, selects on validation data, rejects bad settings."""
import pytest
import torch

from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.train import (
    TrainConfig,
    predict,
    resolve_device,
    seed_everything,
    train_model,
)


def blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + y[:, None, None, None].float()
    return Dataset(x, y, ["a", "b"])


def trained_state(cfg, seed=3):
    seed_everything(seed)
    m = build_model("digits-cnn", (1, 8, 8), 2)
    r = train_model(m, blobs(), cfg, seed=seed, val=blobs(40, seed=9))
    return m.state_dict(), r


def test_learns_separable_data():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    seed_everything(0)
    m = build_model("digits-cnn", (1, 8, 8), 2)
    r = train_model(m, blobs(), cfg)
    test = blobs(100, seed=5)
    assert (predict(m, test.x) == test.y).float().mean() > 0.95
    assert r.history[-1]["loss"] < r.history[0]["loss"]


def test_same_seed_same_weights_and_history():
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    s1, r1 = trained_state(cfg)
    s2, r2 = trained_state(cfg)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.history == r2.history
    s3, _ = trained_state(cfg, seed=4)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_best_val_selection_records_epoch():
    cfg = TrainConfig(epochs=3, batch_size=32, select="best-val")
    _, r = trained_state(cfg)
    accs = [h["val_acc"] for h in r.history]
    assert r.chosen_epoch == accs.index(max(accs)) + 1


def test_best_val_needs_validation():
    with pytest.raises(PoisonlabError, match="needs a validation split"):
        train_model(build_model("digits-cnn", (1, 8, 8), 2), blobs(), TrainConfig(select="best-val"))


def test_step_schedule_and_adam_run():
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=1e-3, schedule="step", step_every=1)
    _, r = trained_state(cfg)
    assert len(r.history) == 2


def test_bad_settings():
    with pytest.raises(PoisonlabError, match="train.epochs must be >= 1"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(PoisonlabError, match="training set is empty"):
        train_model(build_model("mlp", (4,), 2), Dataset(torch.zeros(0, 4), torch.zeros(0), ["a", "b"]), TrainConfig())


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(PoisonlabError, match="no CUDA GPU"):
            resolve_device("cuda")
