"""No duplicate copies of the training set, and ReLUs in place only where exact (issue 12)."""
from __future__ import annotations

import torch
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.models import build_model
from poisonlab.pipeline.steps import shared_rows
from poisonlab.train import TrainConfig, _inplace_relus, predict_logits, train_model


def _data(n: int = 40) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10, [str(i) for i in range(10)])


def test_appended_poisons_share_the_clean_rows():
    train = _data()
    added = Dataset(torch.cat([train.x, train.x[:5]]), torch.cat([train.y, torch.zeros(5, dtype=torch.long)]),
                    train.classes)
    view = shared_rows(train, added)
    assert view.x.data_ptr() == added.x.data_ptr() and torch.equal(view.x, train.x) and torch.equal(view.y, train.y)
    relabelled = Dataset(train.x.clone(), train.y.clone(), train.classes)
    relabelled.y[3] = 9 if relabelled.y[3] != 9 else 0  # a row changed in place: no sharing
    assert shared_rows(train, relabelled) is train


def test_relus_in_place_only_in_a_plain_sequential_without_hooks():
    model = build_model("badnet-mnist", (1, 28, 28), 10)
    assert [type(r).__name__ for r in _inplace_relus(model)] == ["ReLU"] * 3
    handle = model.conv1.register_forward_hook(lambda m, i, o: None)
    assert _inplace_relus(model) == []  # a hook could hold the tensor a ReLU would overwrite
    handle.remove()
    after_sigmoid = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.ReLU())
    assert _inplace_relus(after_sigmoid) == []  # sigmoid keeps its output for backward


def test_in_place_relus_give_the_same_predictions_and_weights():
    data = _data(64)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    torch.manual_seed(0)
    a = build_model("badnet-mnist", (1, 28, 28), 10)
    torch.manual_seed(0)
    b = build_model("badnet-mnist", (1, 28, 28), 10)
    train_model(a, data, cfg)
    handle = b.fc2.register_forward_hook(lambda m, i, o: None)  # forces the out-of-place path
    train_model(b, data, cfg)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and torch.equal(a.conv1.weight, b.conv1.weight)
    out_b = predict_logits(b, data.x)
    handle.remove()
    assert torch.equal(predict_logits(a, data.x), out_b)
    assert not any(m.inplace for m in a.modules() if isinstance(m, nn.ReLU))  # restored after use
