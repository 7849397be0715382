"""Backdoor-neuron analysis (BadNets Sec. 5.3): a hand-built trigger detector is found and flagged."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.analysis import (
    backdoor_neuron_rows,
    channel_activation_stats,
    default_layer,
    flag_backdoor_channels,
    plot_backdoor_neurons,
    read_point,
)
from poisonlab.errors import PoisonlabError
from poisonlab.models import activations, build_model
from poisonlab.triggers import DEFAULT_PATTERN, build_trigger

DETECTOR = 5
CHANNELS = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_built_net() -> nn.Sequential:
    """conv1 (16 channels, 3x3): channel 5 matches the BadNets 3x3 pattern, the rest see plain content.

    The detector weighs the pattern's bright cells +10 and its dark cells -10 with bias -40:
    clean images (pixels in [0, 0.5]) reach at most 5 * 0.5 * 10 - 40 < 0, so it never fires;
    the stamped pattern gives 50 - 40 = 10 where it sits.
    """
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, CHANNELS, 3, padding=1), relu1=nn.ReLU(),
                                    flatten=nn.Flatten(), fc=nn.Linear(CHANNELS * 8 * 8, 2)))
    g = torch.Generator().manual_seed(0)
    pattern = torch.tensor(DEFAULT_PATTERN)
    with torch.no_grad():
        net.conv1.weight.copy_(0.1 * torch.rand(CHANNELS, 1, 3, 3, generator=g))
        net.conv1.bias.zero_()
        net.conv1.weight[DETECTOR, 0] = 10 * (2 * pattern - 1)
        net.conv1.bias[DETECTOR] = -40.0
    return net.eval()


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    clean = 0.5 * torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return clean, build_trigger({"kind": "pattern"}).apply(clean)


def test_hand_built_trigger_channel_is_flagged_exactly(images):
    clean, triggered = images
    stats = channel_activation_stats(_hand_built_net(), None, clean, triggered, batch_size=10)
    assert stats.layer == "conv1" and stats.read_at == "output of relu1"
    assert (stats.n_clean, stats.n_triggered, stats.num_channels) == (64, 64, CHANNELS)
    assert stats.clean_mean[DETECTOR] == 0.0 and stats.triggered_mean[DETECTOR] > 0.15
    assert int(stats.ranking[0]) == DETECTOR
    assert flag_backdoor_channels(stats) == [DETECTOR]
    rows = backdoor_neuron_rows(stats, [DETECTOR])
    assert len(rows) == CHANNELS and list(rows[0]) == ["channel", "clean mean", "triggered mean", "difference", "flagged"]
    assert rows[0]["channel"] == str(DETECTOR) and rows[0]["flagged"] == "yes"
    assert rows[0]["clean mean"] == "0.0000" and rows[0]["difference"].startswith("+")
    assert [r["flagged"] for r in rows[1:]] == ["no"] * (CHANNELS - 1)
    assert len(backdoor_neuron_rows(stats, [DETECTOR], top=3)) == 3


def test_means_match_activations_and_batching(images):
    clean, triggered = images
    net = _hand_built_net()
    stats = channel_activation_stats(net, "conv1", clean, triggered[:40], batch_size=7)
    expected = activations(net, triggered[:40], "relu1")["relu1"].double().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(stats.triggered_mean, expected, rtol=1e-6, atol=1e-9)
    assert stats.n_triggered == 40


def test_no_trigger_effect_flags_nothing(images):
    clean, _ = images
    stats = channel_activation_stats(_hand_built_net(), "conv1", clean, clean)
    assert np.all(stats.difference == 0) and flag_backdoor_channels(stats) == []


def test_rule_parameters(images):
    clean, triggered = images
    stats = channel_activation_stats(_hand_built_net(), "conv1", clean, triggered)
    assert flag_backdoor_channels(stats, min_difference=10.0) == []
    assert flag_backdoor_channels(stats, clean_quantile=0.0) == [DETECTOR]  # its clean mean is the minimum, 0
    assert len(flag_backdoor_channels(stats, z=0.0, clean_quantile=1.0)) > 1
    for bad, message in [({"z": -1}, "z must be"), ({"clean_quantile": 2}, "clean_quantile must be"),
                         ({"min_difference": -0.1}, "min_difference must be")]:
        with pytest.raises(PoisonlabError, match=message):
            flag_backdoor_channels(stats, **bad)


def test_read_point_rule_for_library_models():
    small = build_model("small-cnn", (3, 8, 8), 4)
    assert default_layer(small) == "conv6"
    assert read_point(small, "conv2")[0] == "relu2"  # conv -> bn -> relu
    resnet = build_model("resnet18", (3, 8, 8), 4)
    hooked, _, where = read_point(resnet, "layer4.1.conv2")
    assert default_layer(resnet) == "layer4.1.conv2" and hooked == "layer4.1.conv2"
    assert where == "layer4.1.conv2 -> layer4.1.bn2 -> relu"
    assert read_point(resnet, "layer2.0.shortcut.0")[0] == "layer2.0.shortcut.1"  # BN, no ReLU after it
    x = torch.rand(3, 3, 8, 8)
    stats = channel_activation_stats(resnet, None, x, x)
    assert stats.num_channels == 512 and np.all(stats.clean_mean >= 0)


def test_small_cnn_stats_equal_relu_output():
    small = build_model("small-cnn", (3, 8, 8), 4).eval()
    x = torch.rand(5, 3, 8, 8)
    stats = channel_activation_stats(small, None, x, x[:2])
    expected = activations(small, x, "relu6")["relu6"].double().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(stats.clean_mean, expected, rtol=1e-5, atol=1e-7)
    assert not small.training


@pytest.mark.parametrize("layer,message", [
    ("fc", "layer 'fc' is a Linear, not a convolution; pick one of: conv1"),
    ("relu1", "not a convolution"),
    ("conv7", "has no layer 'conv7'"),
])
def test_bad_layers(images, layer, message):
    clean, triggered = images
    with pytest.raises(PoisonlabError, match=message):
        channel_activation_stats(_hand_built_net(), layer, clean, triggered)


def test_bad_inputs(images):
    clean, triggered = images
    net = _hand_built_net()
    with pytest.raises(PoisonlabError, match="no convolution layer"):
        channel_activation_stats(build_model("mlp", (4,), 2), None, clean, triggered)
    with pytest.raises(PoisonlabError, match=r"clean_x must be a non-empty image batch \(N, C, H, W\), got \(8, 8\)"):
        channel_activation_stats(net, None, clean[0, 0], triggered)
    with pytest.raises(PoisonlabError, match="triggered_x must be a non-empty image batch"):
        channel_activation_stats(net, None, clean, triggered[:0])
    with pytest.raises(PoisonlabError, match="batch_size must be"):
        channel_activation_stats(net, None, clean, triggered, batch_size=0)


def test_plot_backdoor_neurons(tmp_path, images):
    clean, triggered = images
    stats = channel_activation_stats(_hand_built_net(), None, clean, triggered)
    path = tmp_path / "neurons.png"
    plot_backdoor_neurons(path, stats, flag_backdoor_channels(stats))
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
