"""Models: the exact BadNets architecture, layer access by name, safetensors round trip."""
import pytest
import torch
from torch import nn

from poisonlab.errors import PoisonlabError
from poisonlab.models import (
    activations,
    build_model,
    conv_layers,
    first_conv,
    get_layer,
)
from poisonlab.store import load_weights, save_weights


def test_badnet_mnist_architecture_exact():
    m = build_model("badnet-mnist", (1, 28, 28), 10)
    kinds = [(n, type(mod).__name__) for n, mod in m.named_children()]
    assert kinds == [("conv1", "Conv2d"), ("relu1", "ReLU"), ("pool1", "AvgPool2d"), ("conv2", "Conv2d"),
                     ("relu2", "ReLU"), ("pool2", "AvgPool2d"), ("flatten", "Flatten"), ("fc1", "Linear"),
                     ("relu3", "ReLU"), ("fc2", "Linear")]
    assert (m.conv1.out_channels, m.conv1.kernel_size) == (16, (5, 5))
    assert (m.conv2.in_channels, m.conv2.out_channels, m.conv2.kernel_size) == (16, 32, (5, 5))
    assert m.pool1.kernel_size == 2 and m.pool2.kernel_size == 2
    assert (m.fc1.in_features, m.fc1.out_features) == (32 * 4 * 4, 512)
    assert (m.fc2.in_features, m.fc2.out_features) == (512, 10)


@pytest.mark.parametrize("name,shape,classes", [
    ("digits-cnn", (1, 8, 8), 10), ("small-cnn", (3, 32, 32), 43), ("resnet18", (3, 32, 32), 10),
    ("mlp", (3, 4, 4), 5), ("badnet-mnist", (3, 32, 32), 43),
])
def test_models_fit_a_tiny_batch(name, shape, classes):
    """Every model can learn: a few Adam steps drive its loss on 4 random images well down."""
    torch.manual_seed(0)
    m = build_model(name, shape, classes)
    x, y = torch.rand(4, *shape), torch.tensor([0, 1, 2, 3]) % classes
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()  # as in training: batch statistics for batch norm
    first = nn.functional.cross_entropy(m(x), y).item()
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(m(x), y).item() < 0.5 * first


def test_activations_by_name_match_manual_forward():
    m = build_model("badnet-mnist", (1, 28, 28), 10).eval()
    x = torch.rand(5, 1, 28, 28)
    acts = activations(m, x, ["conv2", "fc1"], batch_size=2)
    with torch.no_grad():
        c2 = m.conv2(m.pool1(m.relu1(m.conv1(x))))
    assert torch.allclose(acts["conv2"], c2, atol=1e-6)
    assert acts["fc1"].shape == (5, 512)
    assert [n for n, _ in m.named_modules() if n] == [n for n, _ in m.named_children()]  # no hooks left behind
    assert not any(mod._forward_hooks for mod in m.modules())


def test_unknown_layer_and_model():
    m = build_model("badnet-mnist", (1, 28, 28), 10)
    with pytest.raises(PoisonlabError, match=r"no layer 'conv3' \(did you mean 'conv[12]'\?\)"):
        get_layer(m, "conv3")
    with pytest.raises(PoisonlabError, match=r"unknown model 'resnet19' \(did you mean 'resnet18'\?\)"):
        build_model("resnet19", (3, 32, 32), 10)
    with pytest.raises(PoisonlabError, match="needs images of at least 16x16"):
        build_model("badnet-mnist", (1, 8, 8), 10)
    with pytest.raises(PoisonlabError, match="takes no options"):
        build_model("badnet-mnist", (1, 28, 28), 10, {"width": 3})
    with pytest.raises(PoisonlabError, match="convs_per_block must be 1 or 2"):
        build_model("small-cnn", (3, 32, 32), 10, {"convs_per_block": 3})
    with pytest.raises(PoisonlabError, match=r"has no option\(s\) \['depth'\]"):
        build_model("small-cnn", (3, 32, 32), 10, {"depth": 3})


def test_small_cnn_options_shape_the_network():
    m = build_model("small-cnn", (3, 32, 32), 43, {"convs_per_block": 1, "width": 16})
    assert conv_layers(m) == ["conv1", "conv2", "conv3"]
    assert [m.conv1.out_channels, m.conv2.out_channels, m.conv3.out_channels] == [16, 32, 64]
    assert m.fc1.in_features == 64 * 4 * 4
    assert conv_layers(build_model("small-cnn", (3, 32, 32), 43))[-1] == "conv6"


def test_conv_layer_listing():
    m = build_model("resnet18", (3, 32, 32), 10)
    names = conv_layers(m)
    assert names[0] == "conv1" and names[-1] == "layer4.1.conv2"
    assert first_conv(m) is m.conv1
    with pytest.raises(PoisonlabError, match="no convolution"):
        first_conv(build_model("mlp", (4,), 2))


def test_safetensors_round_trip_and_mismatch(tmp_path):
    a = build_model("digits-cnn", (1, 8, 8), 10)
    save_weights(a, tmp_path / "w.safetensors")
    b = load_weights(build_model("digits-cnn", (1, 8, 8), 10), tmp_path / "w.safetensors")
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(PoisonlabError, match="does not fit the model"):
        load_weights(build_model("digits-cnn", (1, 8, 8), 3), tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(PoisonlabError, match="not a valid safetensors file"):
        load_weights(a, tmp_path / "bad.safetensors")


def test_mlp_without_hidden_layers_is_logistic_regression():
    from poisonlab.subpop.learners import last_hidden_layer

    m = build_model("mlp", (4,), 3, {"hidden": []})
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (4, 3)
    assert last_hidden_layer(m) is None  # ClusterMatch reads the raw input
    assert last_hidden_layer(build_model("mlp", (4,), 3, {"hidden": [10]})) == "relu1"
    with pytest.raises(PoisonlabError, match=r"hidden must be a list of positive integers \(\[\] = logistic"):
        build_model("mlp", (4,), 3, {"hidden": [0]})
