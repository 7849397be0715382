"""A feature extractor trained on other data (``model.weights``, ``train.trainable: last``,
``poisonlab run --save-reference``): the transfer setting of Poison Frogs (Shafahi et al. 2018).

Exact tensors are compared: what is loaded equals the file, what is frozen does not move, the
last layer left fresh is the seeded initialisation; hashes and cache keys change with the
weights' bytes; every bad file or combination is a one-line error."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from one_line_errors import one_line
from poisonlab.cli import main
from poisonlab.families import load_any_config, run_config
from poisonlab.models import build_model
from poisonlab.models.learners import fit_learner
from poisonlab.models.pretrained import load_pretrained, weights_digest
from poisonlab.pipeline.runner import experiment_hash
from poisonlab.train import TrainConfig

SHAPE = (1, 8, 8)


def _saved(tmp_path, classes=10, name="w.safetensors"):
    torch.manual_seed(1)
    model = build_model("digits-cnn", SHAPE, classes)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_load_keeps_every_tensor_but_a_last_layer_of_another_shape(tmp_path):
    source, path = _saved(tmp_path)
    torch.manual_seed(2)
    model = build_model("digits-cnn", SHAPE, 3)
    fresh = copy.deepcopy(model.state_dict())
    left = load_pretrained(model, path)
    last = [k for k in fresh if k not in source.state_dict() or source.state_dict()[k].shape != fresh[k].shape]
    assert left == sorted(last) and len(left) == 2  # the last linear layer's weight and bias
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in left else source.state_dict()[k]), k
    # the same number of classes: every tensor is the file's
    same = build_model("digits-cnn", SHAPE, 10)
    assert load_pretrained(same, path) == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())


def test_bad_weights_files_are_one_line_errors(tmp_path):
    _, path = _saved(tmp_path)
    model = build_model("digits-cnn", SHAPE, 3)
    one_line(r"^model.weights file '.*nope.safetensors' not found", load_pretrained, model, tmp_path / "nope.safetensors")
    other = build_model("mlp", (64,), 3, {"hidden": [5]})
    one_line(r"^model.weights file '.*' holds tensors the model lacks: .*\(weights of another architecture\?\)$",
             load_pretrained, other, path)
    state = load_file(str(path))
    first = sorted(state)[0]
    del state[first]
    save_file(state, str(tmp_path / "short.safetensors"))
    one_line(rf"^model.weights file '.*short.safetensors' lacks tensors of the model: {first}", load_pretrained,
             model, tmp_path / "short.safetensors")
    state = load_file(str(path))
    state[first] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "shape.safetensors"))
    one_line(rf"^model.weights file '.*': tensor {first} has shape \(3, 3\), the model's is .*only the last linear",
             load_pretrained, model, tmp_path / "shape.safetensors")
    # a pickle is never unpickled: reading it fails before any object is built
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Boom()))
    one_line(r"^model.weights file '.*evil.safetensors' is not a valid safetensors file", load_pretrained, model,
             tmp_path / "evil.safetensors")
    assert not marker.exists()


def test_trainable_last_moves_only_the_last_linear_layer(one_thread):
    from poisonlab.data.base import Dataset

    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.rand(64, *SHAPE, generator=g), torch.randint(0, 3, (64,), generator=g), ["a", "b", "c"])
    torch.manual_seed(3)
    model = build_model("small-cnn", SHAPE, 3, {"width": 2, "convs_per_block": 1})
    before = copy.deepcopy(model.state_dict())
    fit_learner(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.1, trainable="last"), seed=0)
    moved = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
    assert moved == ["fc2.bias", "fc2.weight"]  # batch-norm statistics frozen too
    assert all(p.requires_grad for p in model.parameters())  # released after training
    est = build_model("logistic-regression", SHAPE, 3, {})
    one_line(r"^train.trainable 'last' needs a torch network; remove it for an estimator$", fit_learner, est, data,
             TrainConfig(trainable="last"), 0)
    one_line(r"^train.trainable must be all or last, got 'some'$", TrainConfig(trainable="some").validate)


def _targeted(tmp_path, weights, **extra):
    return load_any_config(None, [], device="cpu", data={"name": "digits", "classes": [3, 8]},
                           model={"name": "digits-cnn", "weights": str(weights)},
                           train={"epochs": 4, "optimizer": "adam", "lr": 0.01, "trainable": "last"},
                           attack={"name": "feature-collision", "poison_class": 0, "iterations": 10,
                                   "targets": {"n": 1}},
                           victim={"init": "reference", "trainable": "last", "train": {"epochs": 1}},
                           output={"dir": str(tmp_path / "runs"), "plots": False}, **extra)


def test_save_reference_then_transfer_on_other_classes(tmp_path, capsys, one_thread):
    pre = tmp_path / "pre.yaml"
    pre.write_text(f"name: pre\ndata: {{name: digits, classes: [0, 1, 2, 4, 5, 6, 7, 9]}}\nmodel: {{name: digits-cnn}}\n"
                   f"train: {{epochs: 6, batch_size: 64, optimizer: adam, lr: 0.003}}\noutput: {{dir: {tmp_path / 'runs'}, plots: false}}\n")
    weights = tmp_path / "features" / "eight.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(pre), "--device", "cpu", "-q", "--save-reference", str(weights)])
    assert exc.value.code == 0, capsys.readouterr().err
    assert f"clean reference's weights: {weights}" in capsys.readouterr().out
    pretrained = load_file(str(weights))
    assert pretrained["fc2.weight"].shape[0] == 8 and not list(weights.parent.glob(".*partial"))

    fam, cfg = _targeted(tmp_path, weights)
    out = run_config(cfg)
    base = load_file(str(out.path / "weights" / "baseline.safetensors"))
    victim = load_file(str(out.path / "weights" / "victim.safetensors"))
    assert base["fc2.weight"].shape[0] == 2
    for k, v in base.items():  # features: the pretrained ones, frozen in the reference and the victim
        if not k.startswith("fc2."):
            assert torch.equal(v, pretrained[k]) and torch.equal(victim[k], pretrained[k]), k
    assert not torch.equal(base["fc2.weight"], victim["fc2.weight"])

    # other bytes at the same path: another experiment, another clean reference
    h1 = experiment_hash(cfg.to_dict(), fam.name)
    d1 = weights_digest(weights)
    state = dict(pretrained)
    state["fc1.bias"] = state["fc1.bias"] + 1
    save_file(state, str(weights))
    assert weights_digest(weights) != d1 and experiment_hash(cfg.to_dict(), fam.name) != h1
    again = run_config(_targeted(tmp_path, weights)[1])
    assert again.metrics["baseline"].get("cached") is not True
    assert not torch.equal(load_file(str(again.path / "weights" / "baseline.safetensors"))["fc1.bias"],
                           base["fc1.bias"])


def test_weights_and_save_reference_errors(tmp_path, capsys):
    one_line(r"^config key 'model.weights' must be a string, got 5$", load_any_config, None, [],
             device="cpu", model={"name": "digits-cnn", "weights": 5})
    one_line(r"^model.weights must be the path of a .safetensors file, got ''$", load_any_config, None, [],
             device="cpu", model={"name": "digits-cnn", "weights": ""})
    fam, cfg = _targeted(tmp_path, tmp_path / "missing.safetensors")
    one_line(r"^model.weights file '.*missing.safetensors' not found", run_config, cfg)
    assert not (tmp_path / "runs").exists() or not any(p.name.startswith("2") for p in (tmp_path / "runs").iterdir())
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: c\ndata: {name: digits}\nmodel: {name: digits-cnn}\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(cfg_file), "--save-reference", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert exc.value.code != 0 and "--save-reference writes safetensors; name a .safetensors file" in err
    assert len(err.strip().splitlines()) == 1


def test_cached_features_train_the_last_layer_as_the_whole_network_would(one_thread):
    """fit_last_layer (features computed once) against LastLayerOnly (a forward pass of the frozen
    layers every batch): the same seed, batches and updates, so the same last layer."""
    from poisonlab.data.base import Dataset
    from poisonlab.models.freeze import LastLayerOnly, fit_last_layer
    from poisonlab.train import train_model

    g = torch.Generator().manual_seed(4)
    data = Dataset(torch.rand(96, *SHAPE, generator=g), torch.randint(0, 3, (96,), generator=g), ["a", "b", "c"])
    val = Dataset(torch.rand(32, *SHAPE, generator=g), torch.randint(0, 3, (32,), generator=g), ["a", "b", "c"])
    torch.manual_seed(5)
    a = build_model("small-cnn", SHAPE, 3, {"width": 2, "convs_per_block": 1})
    b = copy.deepcopy(a)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, trainable="last", select="best-val")
    ra = fit_last_layer(a, data, cfg, 0, "cpu", val, "cached")
    wrapped = LastLayerOnly(b, "fc2")
    rb = train_model(wrapped, data, cfg, seed=0, val=val, desc="full")
    wrapped.release()
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k
    assert ra.chosen_epoch == rb.chosen_epoch and len(ra.history) == len(rb.history) == 3

    class Scaled(torch.nn.Module):  # a layer after the last linear one: trained the long way, still right
        def __init__(self):
            super().__init__()
            self.net = build_model("mlp", (64,), 3, {"hidden": [5]})

        def forward(self, x):
            return 2 * self.net(x.reshape(len(x), -1))

    torch.manual_seed(6)
    s = Scaled()
    before = copy.deepcopy(s.state_dict())
    fit_last_layer(s, data, TrainConfig(epochs=1, batch_size=16, lr=0.1, trainable="last"), 0, "cpu", None, "s")
    moved = sorted(k for k, v in s.state_dict().items() if not torch.equal(v, before[k]))
    assert moved == ["net.out.bias", "net.out.weight"]


def test_save_reference_into_an_unwritable_place_is_one_line(tmp_path):
    from types import SimpleNamespace

    from poisonlab.reference_export import save_reference_weights

    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(run / "weights" / "baseline.safetensors"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line(r"^--save-reference cannot write '.*file/w.safetensors': .*; name a file in a writable folder$",
             save_reference_weights, SimpleNamespace(path=run), blocker / "w.safetensors")
    save_reference_weights(SimpleNamespace(path=run), tmp_path / "ok" / "w.safetensors")
    assert torch.equal(load_file(str(tmp_path / "ok" / "w.safetensors"))["w"], torch.zeros(2))
