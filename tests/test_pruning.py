"""Fine-Pruning (Liu et al. 2018): exact masks, clean-mean order, the validation-only stop
rule, fine-tuning with masks in place, the defense registry, and bad-input errors."""
from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import numpy as np
import pytest
import torch
from tiny_data import separable
from torch import nn

from poisonlab.attacks import BadNets
from poisonlab.data.base import Dataset
from poisonlab.defenses import (
    DEFENSES,
    ChannelMask,
    DefenseInputs,
    FinePruningConfig,
    activation_point,
    fine_prune,
    fine_tune,
    pruning,
)
from poisonlab.defenses.pruning import (
    channel_means,
    choose_stop,
    plot_pruning_curve,
    prune_order,
    pruning_curve,
    resolve_layer,
    split_at,
    step_sizes,
)
from poisonlab.errors import PoisonlabError
from poisonlab.metrics import accuracy
from poisonlab.models import activations, build_model
from poisonlab.train import TrainConfig, predict, train_model


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@functools.cache
def shared_model(name: str, shape: tuple[int, ...]) -> nn.Module:
    """One instance per architecture for tests that leave it as they found it (ResNet-18 is slow to build)."""
    torch.manual_seed(0)
    return build_model(name, shape, 3)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Dataset, Dataset]:
    """A BadNets MNIST net trained briefly on separable 16x16 data, and a validation set."""
    torch.manual_seed(0)
    model = build_model("badnet-mnist", (1, 16, 16), 3)
    train_model(model, separable(60, 1), TrainConfig(epochs=2, batch_size=16, lr=0.05), seed=0)
    return model, separable(30, 2), separable(30, 3)


# -- the mask ---------------------------------------------------------------------------
def test_mask_zeroes_pruned_channels_and_changes_nothing_else():
    model = build_model("badnet-mnist", (1, 16, 16), 3)
    x = torch.rand(8, 1, 16, 16)
    before_state, before = state(model), activations(model, x, ["relu2", "fc2"])
    live = before["relu2"].amax((0, 2, 3)).nonzero().flatten()[:2].tolist()  # channels active before
    assert len(live) == 2
    mask = ChannelMask(model, "conv2")
    mask.prune(live)
    assert mask.point == "relu2" and mask.pruned == live
    for mode in (model.train, model.eval):  # survives both modes
        mode()
        after = activations(model, x, ["relu2"])["relu2"]
        assert (after[:, live] == 0).all()
        keep = [c for c in range(32) if c not in live]
        assert torch.equal(after[:, keep], before["relu2"][:, keep])
    assert same_state(before_state, state(model))  # weights bit-identical, no buffers added
    mask.remove()
    assert no_hooks(model) and torch.equal(activations(model, x, "fc2")["fc2"], before["fc2"])


def test_mask_sits_after_batchnorm_and_relu():
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3, bias=False), bn=nn.BatchNorm2d(4), act=nn.ReLU(),
                                      pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    with torch.no_grad():
        model.bn.bias.fill_(1.0)  # a zero conv output is 1 after BN+ReLU, so masking the conv is not pruning
    x = torch.rand(6, 1, 5, 5)
    with ChannelMask(model, "conv") as mask:
        mask.prune([2])
        assert mask.point == "act"
        for mode in (model.train, model.eval):
            mode()
            consumed = activations(model, x, "pool")["pool"]  # what the head reads
            assert (consumed[:, 2] == 0).all() and (consumed[:, [0, 1, 3]] > 0).all()
    assert no_hooks(model)


def test_resnet18_last_block_output_is_the_pruned_tensor():
    model = shared_model("resnet18", (3, 8, 8))
    assert resolve_layer(model, None) == "layer4.1.conv2"
    x = torch.rand(2, 3, 8, 8)
    before = activations(model, x, "layer4.1")["layer4.1"]
    mask = ChannelMask(model, None)
    mask.prune([3, 7])
    assert mask.point == "layer4.1"
    after = activations(model, x, "layer4.1")["layer4.1"]
    assert (after[:, [3, 7]] == 0).all()
    keep = [c for c in range(512) if c not in (3, 7)]
    assert torch.equal(after[:, keep], before[:, keep])
    mask.remove()
    assert no_hooks(model)


@pytest.mark.parametrize("name, shape, layer, point", [
    ("badnet-mnist", (1, 16, 16), "conv2", "relu2"),
    ("badnet-mnist", (1, 16, 16), "conv1", "relu1"),
    ("small-cnn", (3, 32, 32), "conv6", "relu6"),
    ("resnet18", (3, 8, 8), "layer4.1.conv2", "layer4.1"),
    ("resnet18", (3, 8, 8), "layer4.0.conv1", "layer4.0.bn1"),
    ("resnet18", (3, 8, 8), "conv1", "bn1"),
])
def test_activation_point_rule(name, shape, layer, point):
    assert activation_point(shared_model(name, shape), layer) == point


def test_deep_copy_keeps_a_frozen_mask_independent_of_the_original():
    model = build_model("badnet-mnist", (1, 16, 16), 3)
    mask = ChannelMask(model, "conv2")
    mask.prune([0])
    clone = copy.deepcopy(model)
    mask.remove()
    x = torch.rand(3, 1, 16, 16)
    assert (activations(clone, x, "relu2")["relu2"][:, 0] == 0).all()
    assert no_hooks(model)


# -- the order ----------------------------------------------------------------------------
def test_prune_order_follows_clean_means():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 5, 1), relu=nn.ReLU(), flat=nn.Flatten(),
                                      fc=nn.Linear(5 * 4, 2)))
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0]).view(5, 1, 1, 1))
        model.conv.bias.copy_(torch.tensor([0.0, 0.5, 0.1, 0.3, -0.5]))
    # half the images are all 1, half all 0.5: mean of relu(w*v + b) over N, H, W
    x = torch.cat([torch.ones(3, 1, 2, 2), torch.full((3, 1, 2, 2), 0.5)])
    expected = torch.tensor([0.75, 0.0, 0.475, 0.3, 1.0])
    assert torch.allclose(channel_means(model, "conv", x, batch_size=4), expected)
    assert prune_order(model, "conv", x, batch_size=4) == [1, 3, 2, 0, 4]
    # the curve ranks on the validation split it is given
    val = Dataset(x, torch.zeros(6, dtype=torch.long), ["a", "b"])
    assert pruning_curve(model, "conv", val).order == [1, 3, 2, 0, 4]


def test_shared_module_and_wrong_width_are_refused():
    resnet = shared_model("resnet18", (3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(PoisonlabError, match="runs 2 times per forward pass"):
        prune_order(resnet, "layer4.1.conv2", x, mask_at="layer4.1.relu")
    net = build_model("badnet-mnist", (1, 16, 16), 3)
    with pytest.raises(PoisonlabError, match="not 32 channels"):
        prune_order(net, "conv2", torch.rand(2, 1, 16, 16), mask_at="relu1")


# -- hidden units of a Linear layer (kind="linear": the subpopulation MLP victim) ---------------
def test_linear_mask_zeroes_exactly_the_chosen_units():
    torch.manual_seed(3)
    model = build_model("mlp", (5,), 2, {"hidden": [6]})
    x = torch.randn(9, 5)
    before_state, before = state(model), activations(model, x, ["relu1", "out"])
    mask = ChannelMask(model, None, kind="linear")
    mask.prune([1, 4])
    assert (mask.layer, mask.point, mask.channels, mask.pruned) == ("fc1", "relu1", 6, [1, 4])
    for mode in (model.train, model.eval):
        mode()
        got = activations(model, x, ["relu1", "out"])
        assert (got["relu1"][:, [1, 4]] == 0).all()
        assert torch.equal(got["relu1"][:, [0, 2, 3, 5]], before["relu1"][:, [0, 2, 3, 5]])
        # the output layer reads the masked units: out = W (relu1 with units 1 and 4 zeroed) + b
        hidden = before["relu1"].clone()
        hidden[:, [1, 4]] = 0
        assert torch.allclose(got["out"], model.out(hidden), atol=1e-6)
    assert same_state(before_state, state(model))
    mask.remove()
    assert no_hooks(model) and torch.equal(activations(model, x, "out")["out"], before["out"])


def test_linear_layer_choice_and_activation_point():
    deep = build_model("mlp", (4,), 3, {"hidden": [5, 7]})
    assert pruning.resolve_layer(deep, None, kind="linear") == "fc2"  # the layer before the output
    assert pruning.hidden_linear_layers(deep) == ["fc1", "fc2"]
    assert activation_point(deep, "fc1", kind="linear") == "relu1"
    seq = nn.Sequential(OrderedDict(fc=nn.Linear(3, 4), bn=nn.BatchNorm1d(4), act=nn.Tanh(), head=nn.Linear(4, 2)))
    assert activation_point(seq, "fc", kind="linear") == "act"
    assert ChannelMask(build_model("mlp", (4,), 2, {"hidden": [3]}), "fc1", kind="linear").channels == 3
    net = build_model("badnet-mnist", (1, 16, 16), 3)
    assert pruning.resolve_layer(net, None) == "conv2"  # the default kind still prunes convolutions
    assert pruning.resolve_layer(net, None, kind="linear") == "fc1"


def test_linear_prune_order_and_curve_follow_clean_validation_means():
    model = build_model("mlp", (2,), 2, {"hidden": [4]})
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]]))
        model.fc1.bias.zero_()
    val = Dataset(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 1]), ["a", "b"])
    other = Dataset(torch.tensor([[-2.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1]), ["a", "b"])
    # relu means on val: [1.0, 2.0, 0.0, 1.5]; on `other`: [0.0, 0.0, 1.5, 0.0]
    assert torch.allclose(channel_means(model, None, val.x, kind="linear"), torch.tensor([1.0, 2.0, 0.0, 1.5]))
    assert prune_order(model, None, val.x, kind="linear") == [2, 0, 3, 1]
    curve = pruning_curve(model, None, val, kind="linear", max_drop=0.99)
    assert curve.order == [2, 0, 3, 1] and curve.kind == "linear" and curve.point == "relu1"
    assert pruning_curve(model, None, other, kind="linear").order == [0, 1, 3, 2]
    mask = curve.apply(model)
    assert mask.pruned == sorted(curve.pruned_channels) and no_hooks(model) is False
    mask.remove()


def test_linear_bad_inputs_are_one_line_errors():
    logreg = build_model("mlp", (4,), 2, {"hidden": []})
    mlp = build_model("mlp", (4,), 2, {"hidden": [3]})
    cases = [(lambda: ChannelMask(logreg, None, kind="linear"), "no hidden Linear layer"),
             (lambda: pruning_curve(logreg, None, Dataset(torch.rand(3, 4), torch.zeros(3), ["a"]), kind="linear"),
              "no hidden Linear layer"),
             (lambda: ChannelMask(mlp, "out", kind="linear"), "'out' is the output layer"),
             (lambda: ChannelMask(mlp, "relu1", kind="linear"), "'relu1' is a ReLU, not a Linear"),
             (lambda: ChannelMask(mlp, "fc1", kind="dense"), "kind must be 'conv'"),
             (lambda: ChannelMask(mlp, "fc1", kind="linear").prune([3]), "channels 0..2")]
    for call, message in cases:
        with pytest.raises(PoisonlabError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


# -- the stop rule ---------------------------------------------------------------------
def test_choose_stop_planted_sequences():
    # threshold 0.90 - 0.04 = 0.86: 0.86 is kept, 0.859 is the first failure; the later
    # recovery to 0.87 does not count (prune until the first drop)
    assert choose_stop([0.90, 0.91, 0.88, 0.86, 0.859, 0.87], 0.90, 0.04) == 3
    assert choose_stop([0.90, 0.89, 0.88], 0.90, 0.04) == 2  # never fails: prune everything evaluated
    assert choose_stop([0.90, 0.50], 0.90, 0.04) == 0
    assert choose_stop([0.90, 0.90, 0.899], 0.90, 0.0) == 1
    assert step_sizes(5, 1) == [0, 1, 2, 3, 4, 5]
    assert step_sizes(5, 2) == [0, 2, 4, 5]
    assert step_sizes(10, 0.25) == [0, 2, 4, 6, 8, 10]


def test_stop_rule_reads_validation_accuracy_only(monkeypatch):
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 5, 1), relu=nn.ReLU(), flat=nn.Flatten(),
                                      fc=nn.Linear(5 * 4, 2)))
    val = Dataset(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    test = Dataset(torch.rand(4, 1, 2, 2), torch.tensor([1, 1, 0, 0]), ["a", "b"])
    pixel = {"kind": "single-pixel", "margin": 0}
    attack = BadNets.from_config({"trigger": pixel, "target": 0}).evaluation_set(test)
    planted = {"val": [0.90, 0.91, 0.88, 0.86, 0.859, 0.87],
               # a rule reading the test set would stop at 0 pruned (or prune all)
               "test": [0.90, 0.10, 0.10, 0.10, 0.10, 0.95],
               "attack": [1.0, 1.0, 1.0, 0.2, 0.1, 0.0]}
    seen: list[str] = []

    def fake_accuracy(m, x, y, batch_size, device):
        # by the labels: x is the cached activation-point output when the curve runs the tail only
        which = "val" if y is val.y else "test" if y is test.y else "attack" if y is attack.target else "?"
        seen.append(which)
        return planted[which][seen.count(which) - 1]

    monkeypatch.setattr(pruning, "_accuracy", fake_accuracy)
    result = pruning_curve(model, None, val, test, attack, step=1, max_drop=0.04)
    assert "?" not in seen
    assert result.n_pruned == 3 and result.base_val_acc == 0.90
    assert [r["val_acc"] for r in result.rows] == planted["val"]
    assert [r["clean_acc"] for r in result.rows] == planted["test"]  # recorded, not used
    assert [r["attack_success"] for r in result.rows] == planted["attack"]
    assert result.pruned_channels == result.order[:3] and result.chosen_row["val_acc"] == 0.86
    assert no_hooks(model)  # the sweep's mask is gone; apply() attaches the chosen one
    mask = result.apply(model)
    assert mask.pruned == sorted(result.order[:3])
    mask.remove()
    # full_curve=False stops evaluating at the first step past the threshold
    seen.clear()
    short = pruning_curve(model, None, val, None, None, step=1, max_drop=0.04, full_curve=False)
    assert len(short.rows) == 5 and short.n_pruned == 3 and set(seen) == {"val"}


def test_curve_on_a_trained_model_ignores_the_test_set(trained, tmp_path):
    model, val, test = trained
    before = state(model)
    attack = BadNets.from_config({"target": 0}).evaluation_set(test)
    result = pruning_curve(model, "conv2", val, test, attack, step=4, max_drop=0.04, batch_size=16)
    assert [r["n_pruned"] for r in result.rows] == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert result.rows[-1]["fraction_pruned"] == 1.0
    assert result.n_pruned == result.rows[choose_stop([r["val_acc"] for r in result.rows],
                                                      result.base_val_acc, 0.04)]["n_pruned"]
    assert all(r["clean_acc"] is not None and r["attack_success"] is not None for r in result.rows)
    assert same_state(before, state(model)) and no_hooks(model)
    shuffled = Dataset(test.x, test.y[torch.randperm(len(test))], test.classes)
    again = pruning_curve(model, "conv2", val, shuffled, None, step=4, batch_size=16)
    assert again.n_pruned == result.n_pruned and again.order == result.order
    result.write_csv(tmp_path / "curve.csv")
    lines = (tmp_path / "curve.csv").read_text().splitlines()
    assert lines[0] == "n_pruned,fraction_pruned,val_acc,clean_acc,attack_success" and len(lines) == 10
    plot_pruning_curve(tmp_path / "curve.png", result)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


# -- cached activation-point outputs -------------------------------------------------------
def _curve_paths(monkeypatch, model, layer, val, test, attack, **kw):
    """The curve with cached activation-point outputs, the curve by full forward passes,
    and whether the first evaluated the whole model (True) or only a tail after the point."""
    nets: list[bool] = []
    real = pruning._accuracy

    def spy(net, x, y, batch_size, device):
        nets.append(net is model)
        return real(net, x, y, batch_size, device)

    monkeypatch.setattr(pruning, "_accuracy", spy)
    before, modes = state(model), [m.training for m in model.modules()]
    fast = pruning_curve(model, layer, val, test, attack, **kw)
    fast_nets = set(nets)
    assert same_state(before, state(model)) and no_hooks(model)
    assert [m.training for m in model.modules()] == modes
    nets.clear()
    with monkeypatch.context() as m:
        m.setattr(pruning, "split_at", lambda *_: None)
        slow = pruning_curve(model, layer, val, test, attack, **kw)
    assert set(nets) == {True}
    return fast, slow, fast_nets


def _reference_rows(model, result, sets, batch_size):
    """Each step's accuracies with the chosen channels masked, straight from ChannelMask."""
    rows = []
    with ChannelMask(model, result.layer, result.point) as mask:
        for row in result.rows:
            mask.set(result.order[:row["n_pruned"]])
            rows.append([accuracy(predict(model, x, batch_size), y) for x, y in sets])
    return rows


def _same_curves(fast, slow):
    assert fast.rows == slow.rows  # exact: same floats, same None entries
    assert (fast.order, fast.means, fast.n_pruned, fast.point) == (slow.order, slow.means, slow.n_pruned, slow.point)


def _banded(n: int, shape: tuple[int, ...], seed: int) -> Dataset:
    """Noisy images of 3 classes, class k bright in the k-th third of the columns."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, *shape, generator=g) * 0.5
    side = shape[-1] // 3
    for k in range(3):
        x[y == k, ..., k * side:(k + 1) * side] += 0.5
    return Dataset(x, y, ["a", "b", "c"])


@pytest.mark.parametrize("name, shape, layer, options", [
    ("badnet-mnist", (1, 16, 16), "conv2", None),
    ("badnet-mnist", (1, 16, 16), "conv1", None),
    ("digits-cnn", (1, 8, 8), "conv2", None),
    ("small-cnn", (3, 32, 32), "conv3", {"convs_per_block": 1, "width": 8}),
    ("small-cnn", (3, 32, 32), "conv2", {"convs_per_block": 1, "width": 8}),
])
def test_cached_curve_equals_full_forward_curve(monkeypatch, name, shape, layer, options):
    torch.manual_seed(0)
    model = build_model(name, shape, 3, options)
    train_model(model, _banded(48, shape, 0), TrainConfig(epochs=2, batch_size=8, lr=0.05), seed=0)
    val, test = _banded(37, shape, 1), _banded(29, shape, 2)
    attack = BadNets.from_config({"trigger": {"kind": "single-pixel", "margin": 0}, "target": 0}).evaluation_set(test)
    model.eval()  # eval at the start; the curve must leave it so
    fast, slow, nets = _curve_paths(monkeypatch, model, layer, val, test, attack, step=3, batch_size=16)
    assert nets == {False}  # every step ran the tail only
    _same_curves(fast, slow)
    sets = [(val.x, val.y), (test.x, test.y), (attack.x, attack.target)]
    keys = ["val_acc", "clean_acc", "attack_success"]
    assert [[r[k] for k in keys] for r in fast.rows] == _reference_rows(model, fast, sets, 16)
    assert len({r["val_acc"] for r in fast.rows}) > 2  # pruning did change predictions


def test_cached_curve_on_a_trained_model(trained, monkeypatch):
    model, val, test = trained
    attack = BadNets.from_config({"target": 0}).evaluation_set(test)
    model.train()  # train mode at the start: flags are restored, evaluation is in eval mode
    fast, slow, nets = _curve_paths(monkeypatch, model, "conv2", val, test, attack, step=2, batch_size=7,
                                    full_curve=False, max_drop=0.0)
    assert nets == {False} and model.training
    _same_curves(fast, slow)


class _TwoPath(nn.Module):
    """Not an nn.Sequential: a custom forward with a skip path around the pruned conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        return self.fc(self.pool(self.conv2(h) + h).flatten(1))


@pytest.mark.parametrize("make, shape, step", [
    (_TwoPath, (1, 6, 6), 1),
    (lambda: shared_model("resnet18", (3, 8, 8)), (3, 8, 8), 128),
])
def test_curve_falls_back_to_full_forwards_for_other_models(monkeypatch, make, shape, step):
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(2)
    val = Dataset(torch.rand(12, *shape, generator=g), torch.randint(0, 3, (12,), generator=g), ["a", "b", "c"])
    test = Dataset(torch.rand(9, *shape, generator=g), torch.randint(0, 3, (9,), generator=g), ["a", "b", "c"])
    fast, slow, nets = _curve_paths(monkeypatch, model, None, val, test, None, step=step, batch_size=5)
    assert nets == {True}
    _same_curves(fast, slow)
    sets = [(val.x, val.y), (test.x, test.y)]
    assert [[r["val_acc"], r["clean_acc"]] for r in fast.rows] == _reference_rows(model, fast, sets, 5)


def test_split_at_applies_only_to_a_direct_child_of_a_plain_sequential():
    net = build_model("small-cnn", (3, 32, 32), 3, {"convs_per_block": 1, "width": 4})
    head, rest = split_at(net, "relu3")
    names = [n for n, _ in net.named_children()]
    assert len(head) + len(rest) == len(names) and head[-1] is net.relu3 and rest[0] is net.pool3
    x = torch.rand(4, 3, 32, 32)
    net.eval()
    out = head(x)
    for module in rest:
        out = module(out)
    assert torch.equal(out, net(x))
    assert split_at(shared_model("resnet18", (3, 8, 8)), "layer4.1") is None
    assert split_at(_TwoPath(), "relu") is None
    assert split_at(nn.Sequential(OrderedDict(block=nn.Sequential(nn.ReLU()), fc=nn.Identity())), "block.0") is None

    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    assert split_at(Custom(OrderedDict(a=nn.ReLU(), b=nn.ReLU())), "a") is None
    relu = nn.ReLU()
    assert split_at(nn.Sequential(relu, nn.Identity(), relu), "0") is None  # the point runs twice
    handle = net.register_forward_hook(lambda *_: None)
    assert split_at(net, "relu3") is None  # a hook on the model would not run on head and tail
    handle.remove()


def test_curve_without_cache_room_falls_back(monkeypatch):
    model = build_model("badnet-mnist", (1, 16, 16), 3)
    val = separable(10, 0)
    monkeypatch.setattr(pruning, "FEATURE_CACHE_BYTES", 100)
    fast, slow, nets = _curve_paths(monkeypatch, model, "conv2", val, None, None, step=8, batch_size=4)
    assert nets == {True}
    _same_curves(fast, slow)


# -- fine-tuning and the defenses --------------------------------------------------------
def test_fine_tuning_keeps_pruned_channels_at_zero(trained):
    model = copy.deepcopy(trained[0])
    val = trained[1]
    before = state(model)
    mask = ChannelMask(model, "conv2")
    mask.prune([0, 2, 9])
    fine_tune(model, val, TrainConfig(epochs=2, batch_size=8, lr=0.05), seed=0)
    after = state(model)
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])  # it did train
    kept = [c for c in range(32) if c not in (0, 2, 9)]
    assert not torch.equal(before["conv2.weight"][kept], after["conv2.weight"][kept])
    # a pruned channel passes no gradient: its filter is bit-identical, its output zero
    assert torch.equal(before["conv2.weight"][[0, 2, 9]], after["conv2.weight"][[0, 2, 9]])
    model.train()
    assert (activations(model, val.x, "relu2")["relu2"][:, [0, 2, 9]] == 0).all()


def test_fine_prune_returns_a_defended_copy(trained):
    model, val, test = trained
    before = state(model)
    cfg = DEFENSES.get("fine-pruning").from_config({"step": 8, "fine_tune_epochs": 1, "batch_size": 16,
                                                     "layer": "conv2"})
    out = fine_prune(model, cfg, val, test, None, seed=0)
    assert same_state(before, state(model)) and no_hooks(model)
    assert out.model is not model and out.mask is not None and out.mask.pruned == sorted(out.curve.pruned_channels)
    assert len(out.fine_tune.history) == 1 and out.summary()["n_pruned"] == out.curve.n_pruned
    if out.curve.n_pruned:
        pruned = out.curve.pruned_channels
        assert (activations(out.model, val.x, "relu2")["relu2"][:, pruned] == 0).all()
    ft = DEFENSES.get("fine-tuning").run(cfg, DefenseInputs(val=val, model=model, seed=0))
    assert ft.curve is None and ft.mask is None and len(ft.fine_tune.history) == 1
    assert {"fine-pruning", "fine-tuning", "pruning"} <= set(DEFENSES.names())


# -- bad inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"layer": "conv9"}, "no layer 'conv9'"),
    ({"layer": "fc1"}, "'fc1' is a Linear, not a Conv2d"),
    ({"max_drop": 1.0}, r"max_drop must be in \[0, 1\)"),
    ({"max_drop": -0.1}, r"max_drop must be in \[0, 1\)"),
    ({"step": 0}, "step must be >= 1"),
    ({"step": 1.5}, r"step as a fraction of the layer must be in \(0, 1\]"),
    ({"mask_at": "nope"}, "no layer 'nope'"),
])
def test_bad_inputs_are_one_line_errors(kwargs, message):
    model = build_model("badnet-mnist", (1, 16, 16), 3)
    with pytest.raises(PoisonlabError, match=message) as err:
        FinePruningConfig(**kwargs).validate(model)
    assert "\n" not in str(err.value)


def test_bad_inputs_to_the_functions():
    net = build_model("badnet-mnist", (1, 16, 16), 3)
    val = separable(6, 0)
    with pytest.raises(PoisonlabError, match="not a Conv2d"):
        pruning_curve(net, "fc2", val)
    with pytest.raises(PoisonlabError, match=r"max_drop must be in \[0, 1\)"):
        pruning_curve(net, "conv2", val, max_drop=1.5)
    with pytest.raises(PoisonlabError, match="no Conv2d layer"):
        ChannelMask(build_model("mlp", (4,), 2), None)
    with pytest.raises(PoisonlabError, match="channels 0..31"):
        ChannelMask(net, "conv2").prune([32])
    with pytest.raises(PoisonlabError, match="unknown config key 'defense.epochs'"):
        DEFENSES.get("pruning").from_config({"epochs": 3})
    with pytest.raises(PoisonlabError, match="unknown defense"):
        DEFENSES.get("no-such-defense")
    with pytest.raises(PoisonlabError, match="validation split"):
        pruning_curve(net, "conv2", Dataset(torch.zeros(0, 1, 16, 16), torch.zeros(0), ["a"]))
    assert np.isfinite(pruning_curve(net, "conv2", val, step=32).base_val_acc)


def test_untargeted_attack_success_is_the_share_misclassified(trained):
    from poisonlab.attacks import AttackTestSet

    model, val, _ = trained
    wrong_target = (val.y + 1) % 3   # ignored for an untargeted set: any wrong label counts
    attack_set = AttackTestSet(val.x, wrong_target, val.y, torch.arange(len(val)), untargeted=True)
    curve = pruning_curve(model, "conv2", val, attack_set=attack_set, step=4)
    for row in curve.rows:
        assert row["attack_success"] == pytest.approx(1 - row["val_acc"], abs=1e-12)
