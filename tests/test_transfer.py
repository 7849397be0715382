"""Transfer learning (BadNets Sec. 5): frozen features stay bit-identical, new heads, strengthening."""
import copy
import dataclasses

import pytest
import torch
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.models import build_model
from poisonlab.train import TrainConfig, train_model
from poisonlab.transfer import (
    TransferConfig,
    build_student,
    freeze_features,
    frozen_parameter_names,
    head_layers,
    replace_head,
    strengthen,
    train_student,
    unfreeze,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _under(key: str, head: list[str]) -> bool:
    return any(key.startswith(h + ".") for h in head)


@pytest.fixture
def teacher() -> nn.Module:
    """A SmallCNN (conv + BN) for 3x8x8 images with non-trivial BN running statistics."""
    m = build_model("small-cnn", (3, 8, 8), 6)
    with torch.no_grad():
        m.train()(torch.rand(16, 3, 8, 8))
    return m.eval()


@pytest.fixture
def student_data() -> Dataset:
    g = torch.Generator().manual_seed(3)
    return Dataset(torch.rand(24, 3, 8, 8, generator=g), torch.arange(24) % 4, ["a", "b", "c", "d"])


def _train(model: nn.Module, data: Dataset) -> None:
    train_model(model, data, TrainConfig(epochs=2, batch_size=8, lr=0.1, schedule="constant"), seed=0)


def test_feature_extractor_mode_keeps_every_frozen_tensor_bit_identical(teacher, student_data):
    teacher_before = _state(teacher)
    student = build_student(teacher, 4, "feature-extractor", seed=1)
    head = head_layers(student)
    assert head == ["fc1", "relu_fc", "dropout", "fc2"]
    before = _state(student)
    assert any(k.endswith("running_mean") for k in before if not _under(k, head))
    _train(student, student_data)
    after = _state(student)
    frozen = [k for k in before if not _under(k, head)]
    assert len(frozen) == 6 * 6  # conv weight + 5 BN tensors for each of the 6 blocks
    for k in frozen:
        assert torch.equal(before[k], after[k]), k  # weights, BN affine, running stats, num_batches_tracked
    assert any(not torch.equal(before[k], after[k]) for k in before if _under(k, head))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())  # teacher untouched
    assert student.fc2.out_features == 4 and teacher.fc2.out_features == 6


def test_frozen_batch_norm_stays_in_eval_mode_and_survives_deepcopy(teacher):
    student = build_student(teacher, 4)
    student.train()
    assert not student.bn1.training and student.fc1.training and student.dropout.training
    clone = copy.deepcopy(student)
    clone.train()
    assert not clone.bn3.training
    assert set(frozen_parameter_names(student)) == {n for n, _ in student.named_parameters() if not n.startswith("fc")}
    unfreeze(student).train()
    assert student.bn1.training and not frozen_parameter_names(student)
    assert not clone.bn3.training  # the copy keeps its own freeze


def test_fine_tune_mode_changes_the_conv_layers(teacher, student_data):
    student = build_student(teacher, 4, "fine-tune", hidden=[16], seed=1)
    assert not frozen_parameter_names(student)
    before = _state(student)
    _train(student, student_data)
    after = _state(student)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn6.running_mean"], after["bn6.running_mean"])


def test_fine_tune_unfreezes_a_frozen_teacher(teacher):
    frozen_teacher = build_student(teacher, 6)
    student = build_student(frozen_teacher, 4, "fine-tune")
    assert not frozen_parameter_names(student)
    assert student.train().bn2.training
    assert frozen_parameter_names(frozen_teacher)  # the teacher keeps its own state


def test_replace_head_mirrors_layout_fresh_and_seeded(teacher):
    rng = torch.get_rng_state()
    a = replace_head(teacher, 4, seed=7)
    b = replace_head(teacher, 4, seed=7)
    c = replace_head(teacher, 4, seed=8)
    assert torch.equal(torch.get_rng_state(), rng)  # the global random state is untouched
    assert [n for n, _ in a.named_children()][-4:] == ["fc1", "relu_fc", "dropout", "fc2"]
    assert a.fc1.weight.shape == teacher.fc1.weight.shape and (a.fc2.in_features, a.fc2.out_features) == (256, 4)
    assert not torch.equal(a.fc1.weight, teacher.fc1.weight)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and torch.equal(a.fc2.bias, b.fc2.bias)
    assert not torch.equal(a.fc1.weight, c.fc1.weight)
    assert torch.equal(a.conv6.weight, teacher.conv6.weight)
    assert a.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_replace_head_with_explicit_widths(teacher):
    s = replace_head(teacher, 3, hidden=[10, 5])
    assert [n for n, _ in s.named_children()][-6:] == ["flatten", "fc1", "relu_fc1", "fc2", "relu_fc2", "fc3"]
    assert (s.fc1.out_features, s.fc2.out_features, s.fc3.out_features) == (10, 5, 3)
    single = replace_head(teacher, 3, hidden=[])
    assert head_layers(single) == ["fc1"] and single.fc1.out_features == 3
    assert single.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 3)


def test_resnet18_head_is_fc():
    teacher = build_model("resnet18", (3, 8, 8), 10)
    student = build_student(teacher, 4, "feature-extractor")
    assert head_layers(student) == ["fc"] and student.fc.out_features == 4
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert torch.equal(student.layer4[1].conv2.weight, teacher.layer4[1].conv2.weight)
    deep = replace_head(teacher, 4, hidden=[32])
    assert isinstance(deep.fc, nn.Sequential) and deep.fc.fc2.out_features == 4
    assert deep.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_mlp_cannot_be_used_as_feature_extractor_but_can_be_fine_tuned():
    mlp = build_model("mlp", (4,), 3, {"hidden": [5]})
    with pytest.raises(PoisonlabError, match="no convolutional feature extractor"):
        build_student(mlp, 2, "feature-extractor")
    assert build_student(mlp, 2, "fine-tune").out.out_features == 2


def test_head_not_found():
    with pytest.raises(PoisonlabError, match="cannot find the fully connected head"):
        freeze_features(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_train_student_uses_transfer_settings(teacher, student_data):
    cfg = TransferConfig(epochs=1, lr=0.05)
    student, result = train_student(teacher, student_data, cfg, TrainConfig(batch_size=8), seed=0)
    assert len(result.history) == 1 and student.fc2.out_features == 4
    assert cfg.train_config(TrainConfig(batch_size=8)) == TrainConfig(batch_size=8, epochs=1, lr=0.05)


# ----------------------------------------------------------------------------- strengthening


@pytest.mark.parametrize("include_bias", [False, True])
def test_strengthen_multiplies_exactly_the_chosen_input_weights(include_bias):
    model = build_model("digits-cnn", (1, 8, 8), 10)  # convs with bias
    before = _state(model)
    out = strengthen(model, "conv2", [3, 17, 40], 10.0, include_bias=include_bias)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input not mutated
    new = out.state_dict()
    chosen = torch.tensor([3, 17, 40])
    rest = torch.tensor([c for c in range(64) if c not in (3, 17, 40)])
    assert torch.equal(new["conv2.weight"][chosen], before["conv2.weight"][chosen] * 10.0)
    assert torch.equal(new["conv2.weight"][rest], before["conv2.weight"][rest])
    if include_bias:
        assert torch.equal(new["conv2.bias"][chosen], before["conv2.bias"][chosen] * 10.0)
        assert torch.equal(new["conv2.bias"][rest], before["conv2.bias"][rest])
    else:
        assert torch.equal(new["conv2.bias"], before["conv2.bias"])
    for k, v in before.items():
        if k not in ("conv2.weight", "conv2.bias"):
            assert torch.equal(new[k], v), k


def test_strengthen_keeps_frozen_state_and_k_one_is_identity(teacher):
    student = build_student(teacher, 4)
    out = strengthen(student, "conv6", [0], 1)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in out.state_dict().items())
    assert frozen_parameter_names(out) == frozen_parameter_names(student)


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, "k must be a finite number > 0, got 0"),
    ({"k": -2.0}, "k must be a finite number > 0"),
    ({"k": float("nan")}, "k must be a finite number > 0"),
    ({"channels": [64]}, "channel 64 is out of range: layer 'conv2' has 64 channels"),
    ({"channels": [-1]}, "channel -1 is out of range"),
    ({"channels": []}, "non-empty list"),
    ({"channels": [1, 1]}, "distinct"),
    ({"layer": "fc1"}, "layer 'fc1' is a Linear, not a convolution; pick one of: conv1, conv2"),
    ({"layer": "relu1"}, "not a convolution"),
    ({"layer": "conv9"}, "has no layer 'conv9'"),
])
def test_strengthen_bad_inputs(kwargs, message):
    model = build_model("digits-cnn", (1, 8, 8), 10)
    args = {"layer": "conv2", "channels": [0], "k": 10.0} | kwargs
    with pytest.raises(PoisonlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        strengthen(model, **args)


def test_unknown_mode_is_one_line_error(teacher):
    with pytest.raises(PoisonlabError, match="unknown transfer mode 'finetune' \\(did you mean 'fine-tune'\\?\\)"):
        build_student(teacher, 4, "finetune")  # type: ignore[arg-type]


@pytest.mark.parametrize("change,message", [
    ({"mode": "frozen"}, "transfer.mode: unknown transfer mode 'frozen'"),
    ({"epochs": 0}, "transfer.epochs must be"),
    ({"lr": 0.0}, "transfer.lr must be"),
    ({"hidden": [0]}, "transfer.hidden must be"),
    ({"strengthen_k": []}, "transfer.strengthen_k must be a non-empty list"),
    ({"strengthen_k": [1, 0]}, "transfer.strengthen_k: every factor must be a finite number > 0, got 0"),
    ({"strengthen_layer": ""}, "transfer.strengthen_layer must be"),
    ({"strengthen_channels": [-1]}, "transfer.strengthen_channels must be"),
    ({"teacher_fraction": 1.0}, "transfer.teacher_fraction must be a number in \\(0, 1\\)"),
])
def test_transfer_config_validation(change, message):
    TransferConfig().validate()
    TransferConfig(hidden=[8], strengthen_k=[1, 10, 20.5], strengthen_layer="conv6", strengthen_channels=[2]).validate()
    cfg = dataclasses.replace(TransferConfig(), **change)
    with pytest.raises(PoisonlabError, match=message) as err:
        cfg.validate()
    assert "\n" not in str(err.value)


def test_transfer_config_reads_from_yaml_mapping():
    from poisonlab.config import from_dict

    cfg = from_dict(TransferConfig, {"mode": "fine-tune", "strengthen_k": [1, 10]}, "transfer")
    assert cfg.mode == "fine-tune" and cfg.strengthen_k == [1.0, 10.0]
    with pytest.raises(PoisonlabError, match="transfer.mode"):
        from_dict(TransferConfig, {"mode": "nope"}, "transfer")
