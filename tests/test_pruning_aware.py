"""The pruning-aware attack (Liu et al. 2018, Sec. 4): re-inserted channels stay dormant on
clean inputs, the returned model carries no mask, and bad settings are one-line errors."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from tiny_data import separable
from torch import nn

from poisonlab.attacks import BadNets
from poisonlab.attacks.pruning_aware import (
    PruningAwareConfig,
    make_dormant,
    pruning_aware_backdoor,
)
from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.models import activations, build_model
from poisonlab.train import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=16, lr=0.05)


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset, Dataset]:
    clean, val = separable(60, 1), separable(30, 2)
    poisoned = BadNets.from_config({"p": 0.2, "target": 0}).poison(clean, np.random.default_rng(0)).dataset
    return clean, poisoned, val


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_reinserted_channels_stay_dormant_on_clean_inputs(data):
    clean, poisoned, val = data
    cfg = PruningAwareConfig(prune="fraction", fraction=0.5, train=FAST)
    model, info = pruning_aware_backdoor(lambda: build_model("badnet-mnist", (1, 16, 16), 3), clean, poisoned, val,
                                         "conv2", cfg, seed=0)
    assert info["point"] == "relu2" and info["bias_site"] == "conv2" and info["n_pruned"] == 16
    assert no_hooks(model) and not model.training  # re-inserted: no mask left behind
    pruned = info["pruned"]
    acts = activations(model, torch.cat([clean.x, val.x]), "relu2")["relu2"]
    assert (acts[:, pruned] == 0).all()  # dormant after the ReLU on every clean input
    assert min(info["bias_shift"].values()) >= cfg.bias_margin  # every re-inserted bias was lowered
    assert len(info["clean_history"]) == 2 and len(info["poison_history"]) == 2


def test_batchnorm_bias_is_lowered_with_the_validation_stop():
    clean, val = separable(45, 4), separable(30, 5)

    def builder() -> nn.Module:
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 8, 3, padding=1, bias=False), bn=nn.BatchNorm2d(8),
                                         act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(),
                                         fc=nn.Linear(32, 3)))

    cfg = PruningAwareConfig(prune="val-drop", max_drop=0.2, step=2, train=FAST)
    model, info = pruning_aware_backdoor(builder, clean, clean, val, None, cfg, seed=1)
    assert info["layer"] == "conv" and info["bias_site"] == "bn" and info["point"] == "act"
    assert info["curve"][0]["n_pruned"] == 0 and info["n_pruned"] == len(info["pruned"])
    assert info["pruned"]  # this seed prunes some channels before the 20-point drop
    acts = activations(model, torch.cat([clean.x, val.x]), "act")["act"]
    assert (acts[:, info["pruned"]] == 0).all()


def test_make_dormant_lowers_a_live_channel_to_zero():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 1), relu=nn.ReLU(), flat=nn.Flatten()))
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.copy_(torch.tensor([0.5, 0.0, -5.0]))
    x = torch.rand(10, 1, 2, 2)
    peak = (x.amax() + 0.5).item()
    shifts = make_dormant(model, "conv", [0, 2], x, margin=0.1)
    assert shifts[0] == pytest.approx(peak + 0.1, abs=1e-6) and shifts[2] == pytest.approx(0.1)
    acts = activations(model, x, "relu")["relu"]
    assert (acts[:, [0, 2]] == 0).all() and (acts[:, 1] > 0).all()  # channel 1 untouched


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
    ({"max_drop": 1.0}, r"max_drop must be in \[0, 1\)"),
    ({"prune": "random"}, "must be 'val-drop' or 'fraction'"),
    ({"bias_margin": -1.0}, "bias_margin must be >= 0"),
    ({"step": 0}, "step must be >= 1"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(PoisonlabError, match=message):
        PruningAwareConfig(**kwargs).validate()


def test_layer_without_bias_or_batchnorm_is_refused():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 1, bias=False), relu=nn.ReLU()))
    with pytest.raises(PoisonlabError, match="has no bias and no batch norm"):
        make_dormant(model, "conv", [0], torch.rand(2, 1, 2, 2))
    with pytest.raises(PoisonlabError, match="not a Conv2d"):
        make_dormant(model, "relu", [0], torch.rand(2, 1, 2, 2))
