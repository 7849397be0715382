"""Learners behind one contract (issue 11, item 3): scikit-learn estimators as nn.Modules,
models named by import path or file (trust-code), capabilities and fingerprints."""
from __future__ import annotations

import importlib.util
import math
import re
import sys

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from torch import nn

from poisonlab.baseline_cache import baseline_key
from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError
from poisonlab.models import (
    MODELS,
    EstimatorModel,
    build_model,
    check_model_name,
    set_trust_code,
    trusting_code,
)
from poisonlab.models.imports import trust_code
from poisonlab.models.learners import (
    capabilities,
    fit_learner,
    is_torch,
    model_fingerprint,
    require,
)
from poisonlab.subpop.learners import (
    LearnerSpec,
    fit_scratch,
    fit_victim,
    last_hidden_layer,
    probabilities,
)
from poisonlab.train import TrainConfig, predict, predict_logits, train_model

HAS_LIGHTGBM = importlib.util.find_spec("lightgbm") is not None
LOG_EPS = math.log(1e-12)
QUICK = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=0.01, schedule="constant")


def blobs(n: int = 40, classes: int = 2, seed: int = 0) -> Dataset:
    """Linearly separable blobs: class k around (3k, -3k), spread 0.3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 2, generator=g) * 0.3 + torch.stack([3.0 * y, -3.0 * y], 1)
    return Dataset(x, y, [f"c{k}" for k in range(classes)])


@pytest.fixture(autouse=True)
def _no_trust():
    set_trust_code(False)
    yield
    set_trust_code(False)


# --------------------------------------------------------------------------- EstimatorModel

def test_logits_are_log_predict_proba_by_hand():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0], [0.5, 0.5], [2.5, 3.0]])
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    model = EstimatorModel(LogisticRegression(), 2).fit_arrays(x, y, 2, seed=0)
    ref = LogisticRegression(random_state=0).fit(x.double().numpy(), y.numpy())
    expected = np.log(np.clip(ref.predict_proba(x.double().numpy()), 1e-12, None))
    logits = model(x)
    assert logits.dtype == torch.float32 and logits.shape == (6, 2)
    np.testing.assert_allclose(logits.numpy(), expected.astype(np.float32), rtol=1e-6)
    assert len(model.state_dict()) == 0 and not list(model.parameters())
    # predict_logits / softmax give the estimator's own probabilities back
    np.testing.assert_allclose(probabilities(model, x), ref.predict_proba(x.double().numpy()), rtol=1e-5)


def test_classes_absent_from_training_get_log_eps():
    ds = blobs(30, 3)
    keep = ds.y != 1  # class 1 never seen
    x, y = ds.x[keep], ds.y[keep]
    lr = build_model("logistic-regression", (2,), 4)
    lr.fit_arrays(x, y, 4, seed=0)
    logits = lr(ds.x)
    assert logits.shape == (30, 4)
    assert torch.all(logits[:, 1] == torch.tensor(LOG_EPS, dtype=torch.float32))
    assert torch.all(logits[:, 3] == torch.tensor(LOG_EPS, dtype=torch.float32))
    proba = lr.estimator.predict_proba(ds.x.double().numpy())
    np.testing.assert_allclose(logits[:, [0, 2]].numpy(), np.log(proba), rtol=1e-5)
    # decision_function (binary): [-d/2, d/2] on the seen classes' columns, the others below
    svm = build_model("linear-svm", (2,), 4)
    svm.fit_arrays(x, y, 4, seed=0)
    d = svm.estimator.decision_function(ds.x.double().numpy())
    out = svm(ds.x)
    np.testing.assert_allclose(out[:, 0].numpy(), -d / 2, rtol=1e-5)
    np.testing.assert_allclose(out[:, 2].numpy(), d / 2, rtol=1e-5)
    assert torch.all(out[:, 1] < out[:, [0, 2]].min(1).values) and torch.equal(out[:, 1], out[:, 3])
    assert set(out.argmax(1).tolist()) <= {0, 2}


class _MajorityVote(ClassifierMixin, BaseEstimator):
    """An estimator with only fit/predict (no predict_proba, no decision_function)."""

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.label_ = int(np.bincount(y).argmax())
        return self

    def predict(self, x):
        return np.full(len(x), self.label_)


def test_estimator_without_proba_gives_one_hot():
    m = EstimatorModel(_MajorityVote(), 3).fit_arrays(torch.zeros(5, 2), torch.tensor([2, 2, 0, 2, 1]), 3, seed=0)
    assert m(torch.zeros(2, 2)).tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("name,options", [("random-forest", {"n_estimators": 10}), ("logistic-regression", {}),
                                          ("kernel-svm", {}), ("gradient-boosting", {"max_iter": 20}),
                                          ("linear-svm", {})])
def test_estimators_learn_a_separable_set(name, options):
    train, test = blobs(60, 3, seed=0), blobs(30, 3, seed=1)
    model = build_model(name, (2,), 3, options)
    assert isinstance(model, EstimatorModel) and MODELS.get(name).kind == "estimator"
    result = fit_learner(model, train, QUICK, seed=0)
    assert result.history == [] and result.chosen_epoch == 0 and result.seconds >= 0 and result.images_per_second > 0
    assert float((predict(model, test.x) == test.y).float().mean()) == 1.0


def test_image_input_is_flattened():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(20) % 2
    x = torch.rand(20, 1, 4, 4, generator=g) * 0.2 + y.view(-1, 1, 1, 1).float()
    model = build_model("random-forest", (1, 4, 4), 2, {"n_estimators": 5})
    fit_learner(model, Dataset(x, y, ["a", "b"]), QUICK, seed=0)
    assert torch.equal(predict_logits(model, x).argmax(1), y)  # channels-last batches from the evaluator


def test_seed_reproducibility_and_random_state():
    train, probe = blobs(40, 2), torch.randn(50, 2, generator=torch.Generator().manual_seed(5)) * 3
    a, b, c = (build_model("random-forest", (2,), 2, {"n_estimators": 5, "max_features": 1}) for _ in range(3))
    fit_learner(a, train, QUICK, seed=7)
    fit_learner(b, train, QUICK, seed=7)
    fit_learner(c, train, QUICK, seed=8)
    assert a.estimator.random_state == 7 and c.estimator.random_state == 8
    assert torch.equal(a(probe), b(probe))
    assert model_fingerprint(a) == model_fingerprint(c)  # the seed is not part of what the learner is


def test_unknown_and_non_plain_estimator_options():
    with pytest.raises(PoisonlabError) as exc:
        build_model("random-forest", (2,), 2, {"n_estimator": 5})
    msg = str(exc.value)
    assert msg.startswith("model 'random-forest' has no option 'n_estimator' (did you mean 'n_estimators'?); options: ")
    assert "\n" not in msg and "max_depth" in msg
    with pytest.raises(PoisonlabError, match=r"^model.options.n_estimators must be a number, string, true/false, null "
                                             r"or a list of them, got \{'a': 1\}$"):
        build_model("random-forest", (2,), 2, {"n_estimators": {"a": 1}})
    with pytest.raises(PoisonlabError, match=r"^model.options.random_state of model 'random-forest' is set from the "
                                             r"run's seed; remove it \(change the seed instead\)$"):
        build_model("random-forest", (2,), 2, {"random_state": 1})
    model = build_model("logistic-regression", (2,), 2, {"C": -1.0})  # sklearn checks values when fitting
    with pytest.raises(PoisonlabError, match=r"^model 'logistic-regression' could not be fitted \(InvalidParameterError: "):
        fit_learner(model, blobs(), QUICK, seed=0)


@pytest.mark.skipif(not HAS_LIGHTGBM, reason="lightgbm is not installed (pip install 'poisonlab[lightgbm]')")
def test_lightgbm_learns():
    train, test = blobs(60, 3, seed=0), blobs(30, 3, seed=1)
    model = build_model("lightgbm", (2,), 3, {"n_estimators": 20, "min_child_samples": 2})
    fit_learner(model, train, QUICK, seed=0)
    assert model.estimator.random_state == 0 and model.estimator.verbose == -1
    assert float((predict(model, test.x) == test.y).float().mean()) == 1.0


@pytest.mark.skipif(HAS_LIGHTGBM, reason="lightgbm is installed")
def test_lightgbm_missing_is_one_line():
    expected = ("model 'lightgbm' needs the lightgbm package, which is not installed; pip install lightgbm "
                "(or pip install 'poisonlab[lightgbm]')")
    with pytest.raises(PoisonlabError) as exc:
        build_model("lightgbm", (2,), 2)
    assert str(exc.value) == expected
    with pytest.raises(PoisonlabError, match=re.escape(expected)):
        check_model_name("lightgbm")


# --------------------------------------------------------------------------- import paths

NET_SOURCE = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, input_shape, hidden=4):
        super().__init__()
        self.seen = (num_classes, input_shape, hidden)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], hidden)
        self.relu = nn.ReLU()
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(self.relu(self.fc1(self.flatten(x))))


class Flat(nn.Sequential):
    def __init__(self, in_features, num_classes):
        super().__init__(nn.Flatten(), nn.Linear(in_features, num_classes))


VALUE = 3


def make():
    raise AssertionError("must never be called")
'''


def test_import_path_builds_a_torch_net_with_injection(tmp_path, monkeypatch):
    (tmp_path / "bl_usernets.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bl_usernets", raising=False)
    net = build_model("bl_usernets:Net", (1, 4, 4), 3, {"hidden": 5})  # a module path needs no trust-code
    assert net.seen == (3, (1, 4, 4), 5) and net.out.out_features == 3
    flat = build_model("bl_usernets:Flat", (1, 4, 4), 2)
    assert flat[1].in_features == 16 and flat[1].out_features == 2
    assert capabilities(net) == {"torch", "layers", "gradients", "proba"}
    fit_learner(net, Dataset(torch.rand(16, 1, 4, 4), torch.arange(16) % 3, ["a", "b", "c"]), QUICK, seed=0)
    with pytest.raises(PoisonlabError, match=r"^model.options.num_classes of model 'bl_usernets:Net' is set by "
                                             r"poisonlab from the data; remove it$"):
        build_model("bl_usernets:Net", (1, 4, 4), 3, {"num_classes": 5})
    with pytest.raises(PoisonlabError, match=r"^model 'bl_usernets:Net' has no option 'hiden' \(did you mean "
                                             r"'hidden'\?\); its constructor takes: hidden, input_shape, num_classes$"):
        build_model("bl_usernets:Net", (1, 4, 4), 3, {"hiden": 5})
    # an estimator class by import path is wrapped
    lr = build_model("sklearn.linear_model:LogisticRegression", (2,), 2, {"C": 10.0})
    assert isinstance(lr, EstimatorModel) and lr.estimator.C == 10.0


def test_file_path_needs_trust_code(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(NET_SOURCE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PoisonlabError) as exc:
        build_model("./mynet.py:Net", (1, 4, 4), 3)
    assert str(exc.value) == "model './mynet.py:Net' runs the file ./mynet.py; pass --trust-code to allow it"
    with pytest.raises(PoisonlabError, match="pass --trust-code"):
        check_model_name(f"{tmp_path}/mynet.py:Net")
    with trusting_code():
        assert trust_code()
        net = build_model("./mynet.py:Net", (1, 4, 4), 3)
        absolute = build_model(f"{tmp_path}/mynet.py:Flat", (1, 4, 4), 2)
        check_model_name("mynet.py:Net")
    assert not trust_code()
    assert net.seen == (3, (1, 4, 4), 4) and isinstance(absolute, nn.Sequential)


def _error_of(name: str, options: dict | None = None) -> str:
    with pytest.raises(PoisonlabError) as exc:
        build_model(name, (1, 4, 4), 3, options)
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_import_path_errors_are_exact_one_liners(tmp_path, monkeypatch):
    (tmp_path / "bl_errnets.py").write_text(NET_SOURCE)
    (tmp_path / "boom.py").write_text("raise RuntimeError('no GPU here\\nsecond line')\n")
    (tmp_path / "bl_boommod.py").write_text("import nonexistent_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    not_a_model = "is not a class deriving from torch.nn.Module or sklearn.base.BaseEstimator; name a network or estimator class"
    for name in ("os:system", "subprocess:Popen", "json:loads", "bl_errnets:VALUE", "bl_errnets:make", "math:pi"):
        assert _error_of(name) == f"model '{name}' {not_a_model}"
    assert _error_of("no_such_pkg_xyz.nets:Net") == ("model 'no_such_pkg_xyz.nets:Net': cannot import module "
                                                     "'no_such_pkg_xyz.nets' (ModuleNotFoundError: No module named "
                                                     "'no_such_pkg_xyz')")
    assert _error_of("bl_boommod:Net") == ("model 'bl_boommod:Net': cannot import module 'bl_boommod' "
                                           "(ModuleNotFoundError: No module named 'nonexistent_dependency_xyz')")
    assert _error_of("bl_errnets:Nett") == "model 'bl_errnets:Nett': module 'bl_errnets' has no attribute 'Nett' (did you mean 'Net'?)"
    assert _error_of("bl_errnets:Net.Inner") == "model 'bl_errnets:Net.Inner': module 'bl_errnets' has no attribute 'Net.Inner'"
    assert _error_of("not a module:Net") == ("model 'not a module:Net': 'not a module' is neither a Python module path "
                                             "(package.module) nor a file ending in .py")
    assert _error_of("bl_errnets:") == "model 'bl_errnets:' is not an import path 'package.module:Class' or 'file.py:Class'"
    with trusting_code():
        assert _error_of("boom.py:Net") == "model 'boom.py:Net': running the file boom.py raised RuntimeError: no GPU here second line"
        assert _error_of("missing.py:Net").startswith("model 'missing.py:Net': the file missing.py does not exist "
                                                      "(paths are relative to the current folder, ")
        assert _error_of("bl_errnets.py:Nope") == "model 'bl_errnets.py:Nope': the file bl_errnets.py has no attribute 'Nope'"
        assert _error_of("bl_errnets.py:Net", {"hidden": "wide"}).startswith(
            "model 'bl_errnets.py:Net': building Net(...) raised TypeError: ")
    # a registered name keeps the registry's error
    assert _error_of("resnet19") == _error_of("resnet19")
    assert "unknown model 'resnet19' (did you mean 'resnet18'?)" in _error_of("resnet19")


# --------------------------------------------------------------------------- contract

def test_capabilities_and_require():
    net = build_model("digits-cnn", (1, 8, 8), 10)
    est = build_model("random-forest", (64,), 10)
    assert capabilities(net) == {"torch", "layers", "gradients", "proba"} and is_torch(net)
    assert capabilities(est) == {"estimator", "proba"} and not is_torch(est)
    require(net, "layers", "pruning")
    with pytest.raises(PoisonlabError, match=r"^pruning needs a torch network with named conv/linear layers; the model "
                                             r"is a scikit-learn estimator \(RandomForestClassifier\)$"):
        require(est, "layers", "pruning")


def test_fingerprint_follows_the_users_file_and_the_shapes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fpnet.py"
    path.write_text(NET_SOURCE)
    with trusting_code():
        fp1 = model_fingerprint(build_model("fpnet.py:Net", (1, 4, 4), 3))
        assert model_fingerprint(build_model("fpnet.py:Net", (1, 4, 4), 3)) == fp1
        path.write_text(NET_SOURCE + "\n# an edit that changes nothing of the shapes\n")
        fp2 = model_fingerprint(build_model("fpnet.py:Net", (1, 4, 4), 3))
        assert fp2 != fp1
        assert model_fingerprint(build_model("fpnet.py:Net", (1, 4, 4), 3, {"hidden": 6})) != fp2
    mlp3, mlp4 = build_model("mlp", (4,), 2, {"hidden": [3]}), build_model("mlp", (4,), 2, {"hidden": [4]})
    assert model_fingerprint(mlp3) != model_fingerprint(mlp4)
    assert model_fingerprint(mlp3) == model_fingerprint(build_model("mlp", (4,), 2, {"hidden": [3]}))
    rf5, rf6 = build_model("random-forest", (2,), 2, {"n_estimators": 5}), build_model("random-forest", (2,), 2, {"n_estimators": 6})
    assert model_fingerprint(rf5) != model_fingerprint(rf6)
    assert model_fingerprint(rf5) != model_fingerprint(mlp3)


def test_baseline_key_takes_the_model_fingerprint():
    ds = blobs()
    what = {"model": "mlp", "seed": 0}
    plain = baseline_key(what, ds, None, "cpu")
    assert baseline_key(what, ds, None, "cpu", model_fp=None) == plain
    a, b = baseline_key(what, ds, None, "cpu", "aa"), baseline_key(what, ds, None, "cpu", "bb")
    assert len({plain, a, b}) == 3 and baseline_key(what, ds, None, "cpu", "aa") == a


def test_torch_path_is_bit_identical_to_train_model():
    ds = blobs(32, 2)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.05)
    torch.manual_seed(3)
    a = build_model("mlp", (2,), 2, {"hidden": [5]})
    torch.manual_seed(3)
    b = build_model("mlp", (2,), 2, {"hidden": [5]})
    ra = train_model(a, ds, cfg, seed=1, val=ds)
    rb = fit_learner(b, ds, cfg, seed=1, val=ds)
    assert ra.history == rb.history and ra.chosen_epoch == rb.chosen_epoch
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------- subpopulation learners

def test_subpop_learners_with_an_estimator():
    train, test = blobs(40, 2, seed=0), blobs(20, 2, seed=1)
    spec = LearnerSpec(name="random-forest")  # the MLP default options are not passed to it
    spec.validate()
    model = fit_scratch(spec, train, seed=0)
    assert isinstance(model, EstimatorModel) and model.estimator.n_estimators == 100
    assert float((predict(model, test.x) == test.y).float().mean()) == 1.0
    assert last_hidden_layer(model) is None  # ClusterMatch reads the raw features
    again = fit_victim(spec, None, train, seed=0)
    assert torch.equal(again(test.x), model(test.x))
    for mode in ("transfer", "fine-tune"):
        with pytest.raises(PoisonlabError, match=rf"^model.mode {mode} continues training a torch network; model "
                                                 r"'random-forest' is a scikit-learn estimator; use mode: scratch$"):
            LearnerSpec(name="random-forest", mode=mode).validate()
        with pytest.raises(PoisonlabError, match=rf"^model.mode {mode} \(use mode: scratch\) needs a torch network; "
                                                 r"the model is a scikit-learn estimator \(RandomForestClassifier\)$"):
            fit_victim(LearnerSpec(name="sklearn.ensemble:RandomForestClassifier", options={}, mode=mode),
                       model, train, seed=0)


def test_subpop_torch_learner_unchanged():
    ds = blobs(32, 2)
    spec = LearnerSpec(train=QUICK)
    model = fit_scratch(spec, ds, seed=2)
    torch.manual_seed(2)
    ref = build_model("mlp", (2,), 2, {"hidden": [10]})
    train_model(ref, ds, QUICK, seed=2, desc="ref")
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), ref.state_dict().values()))
