"""The one defense registry (issue 11, item 2): kinds and needs, one calling convention
(``spec.run(cfg, ctx)``), robust training against a BadNets-like image experiment, the needs
errors, a defense registered from outside, and one set of defaults for both worlds."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.data.base import Dataset
from poisonlab.defend import check_defenses, run_defenses
from poisonlab.defenses import (
    DEFENSES,
    KINDS,
    NEEDS,
    DefenseInputs,
    DefenseOutcome,
    DefenseSpec,
    FilterContext,
    SmoothedRidgeClassifier,
    register_defense,
    unregister_defense,
)
from poisonlab.defenses.certified import SmoothedRidge
from poisonlab.errors import PoisonlabError
from poisonlab.subpop.defended import parse_defenses
from poisonlab.train import predict

N_PER_CLASS, N_POISON = 40, 4


def images(n_per_class: int, seed: int, n_poison: int = 0) -> tuple[Dataset, torch.Tensor]:
    """1x4x4 grey images of two classes (dark 0.2, bright 0.8, noise 0.05); the first
    ``n_poison`` dark images relabelled 1 (planted rows of high loss). Returns the set and
    the poison mask."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n_per_class) % 2
    x = 0.2 + 0.6 * y[:, None, None, None].float() + 0.05 * torch.randn(len(y), 1, 4, 4, generator=g)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.nonzero(y == 0).flatten()[:n_poison]] = True
    return Dataset(x, torch.where(mask, 1, y), ["dark", "bright"]), mask


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))


CALLS: list[int] = []


def retrain(data: Dataset, name: str) -> nn.Module:
    """The victim's learner: seeded init, 150 full-batch Adam steps (deterministic on CPU)."""
    CALLS.append(len(data))
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, data: Dataset) -> float:
    return float((predict(model, data.x) == data.y).float().mean())


@pytest.fixture(scope="module")
def experiment(one_thread):
    train, mask = images(N_PER_CLASS, 0, N_POISON)
    val, test = images(10, 1)[0], images(30, 2)[0]
    return train, mask, val, test, retrain(train, "victim")


def defend(raw: list, experiment, context: bool = True, model: nn.Module | None = None):
    train, mask, val, test, victim = experiment
    evaluate = lambda m, name: {"clean_accuracy": accuracy(m, test)}
    ctx = FilterContext(train, mask, retrain, None, val) if context else None
    return run_defenses(check_defenses(raw), model or victim, val, test, None, evaluate, 0, "cpu",
                        {"clean_accuracy": accuracy(victim, test)}, context=ctx)


def test_every_defense_declares_kind_and_needs_from_the_vocabulary():
    assert set(DEFENSES.names()) >= {"pruning", "fine-tuning", "fine-pruning", "spectral-signatures",
                                     "activation-clustering", "trim", "sever", "certified", "strip", "neural-cleanse"}
    for name in DEFENSES.names():
        spec = DEFENSES.get(name)
        assert spec.kind in KINDS and spec.needs <= set(NEEDS), name
    kinds = {n: DEFENSES.get(n).kind for n in DEFENSES.names()}
    assert kinds["trim"] == kinds["sever"] == kinds["certified"] == "robust-training"
    assert kinds["strip"] == "input-detector" and kinds["fine-pruning"] == "model-repair"
    assert DEFENSES.get("spectral-signatures").needs_of(check_defenses(
        [{"name": "spectral-signatures", "rule": "validation"}])[0][1]) == {"torch-layers", "retrain", "validation"}
    with pytest.raises(ValueError, match="kind 'detector' is not one of"):
        DefenseSpec("x", "", type(DEFENSES.get("trim").from_config()), lambda c, x: None, "detector")
    with pytest.raises(ValueError, match="unknown needs"):
        DefenseSpec("x", "", type(DEFENSES.get("trim").from_config()), lambda c, x: None, "filter", {"gpu"})


def test_trim_and_sever_remove_the_planted_rows_of_a_badnets_like_image_experiment(experiment):
    """The planted rows (dark images labelled bright) are the 4 of highest loss and of the most
    outlying last-layer gradients: TRIM keeping 76 of 80 rows and one SEVER round removing
    5 % (4 rows) remove exactly them, and both retrain with the victim's own learner."""
    CALLS.clear()
    out = defend([{"name": "trim", "keep_fraction": 0.95}, {"name": "sever", "remove_fraction": 0.05, "rounds": 1}],
                 experiment)
    n = 2 * N_PER_CLASS
    for name in ("trim", "sever"):
        d = out.metrics[name]["detection"]
        assert (d["n_removed"], d["true_positives"], d["false_positives"]) == (N_POISON, N_POISON, 0), name
        assert out.metrics[name]["n_removed"] == N_POISON and out.metrics[name]["clean_accuracy"] == 1.0
    trim = out.metrics["trim"]
    assert trim["kept"] == n - N_POISON and trim["converged"] and CALLS[:trim["fits"]] == [n] + [n - N_POISON] * (
        trim["fits"] - 1)
    assert out.metrics["sever"]["removed_per_round"] == [N_POISON] and CALLS[trim["fits"]:] == [n, n - N_POISON]
    assert [r["defense"] for r in out.rows] == ["none", "trim", "sever"]
    assert out.rows[1]["poisons removed"] == 1.0 and out.rows[1]["channels pruned"] is None


def test_certified_gives_the_smoothed_ridge_as_a_model(experiment):
    train, mask, val, test, victim = experiment
    out = defend([{"name": "certified", "q": 0.2, "lam": 0.5, "curve_rows": 20}], experiment)
    ctx = DefenseInputs(train, mask, retrain, None, val, model=victim, test=test)
    outcome = DEFENSES.get("certified").run(check_defenses([{"name": "certified", "q": 0.2, "lam": 0.5}])[0][1], ctx)
    ridge = SmoothedRidge(0.2, 0.5).fit(train.x.reshape(len(train), -1).double().numpy(), train.y.numpy())
    want = ridge.predict(test.x.reshape(len(test), -1).double().numpy())
    assert isinstance(outcome.model, SmoothedRidgeClassifier) and outcome.removed is None
    assert predict(outcome.model, test.x, batch_size=7).numpy().tolist() == want.tolist()  # any batching
    assert out.metrics["certified"]["clean_accuracy"] == float((want == test.y.numpy()).mean())
    m = out.metrics["certified"]
    assert m["certified_r"] == N_POISON and m["certified_rows"] == 20 and 0 <= m["certified_accuracy"] <= 1


def test_needs_errors_are_one_line(experiment):
    digits = Dataset(torch.rand(30, 1, 8, 8), torch.arange(30) % 10, [str(i) for i in range(10)])
    evaluate = lambda m, name: {"clean_accuracy": 0.0}
    with pytest.raises(PoisonlabError) as err:
        run_defenses(check_defenses([{"name": "certified"}]), tiny_cnn(), digits, digits, None, evaluate, 0, "cpu",
                     {"clean_accuracy": 0.0}, context=FilterContext(digits, torch.zeros(30, dtype=torch.bool),
                                                                    retrain, None, digits))
    assert str(err.value) == "defense 'certified' needs binary labels (2 classes); this experiment's data have 10 classes"
    tab = Dataset(torch.rand(20, 108), torch.arange(20) % 2, ["a", "b"])
    mlp = nn.Sequential(nn.Linear(108, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(PoisonlabError) as err:
        run_defenses(check_defenses([{"name": "strip"}]), mlp, tab, tab, None, evaluate, 0, "cpu",
                     {"clean_accuracy": 0.0})
    assert str(err.value) == "defense 'strip' needs image inputs; this experiment's data are tabular (shape (108,))"

    class Estimator(nn.Module):  # estimator-like: answers logits, has no conv or linear layer
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([-x.flatten(1).mean(1), x.flatten(1).mean(1)], 1)

    with pytest.raises(PoisonlabError) as err:
        defend([{"name": "fine-pruning", "label": "fp"}], experiment, model=Estimator())
    assert str(err.value) == ("defense 'fp' needs a torch model with named conv/linear layers; this experiment's "
                              "model (Estimator) has no Conv2d or Linear layer")
    with pytest.raises(PoisonlabError) as err:  # a victim that cannot be retrained (the pruning-aware BadNet)
        defend([{"name": "pruning"}, {"name": "trim"}], experiment, context=False)
    assert str(err.value).startswith("defense 'trim' needs a way to retrain the victim's learner on a subset of its "
                                     "rows; this experiment gives no way to retrain the BadNet")


def test_fine_pruning_prunes_conv_channels_of_a_cnn_and_hidden_units_of_an_mlp(experiment):
    val, victim = experiment[2], experiment[4]
    cfg = check_defenses([{"name": "fine-pruning", "fine_tune_epochs": 1, "max_drop": 0.5}])[0][1]
    conv = DEFENSES.get("fine-pruning").run(cfg, DefenseInputs(val=val, model=victim))
    flat = Dataset(val.x.flatten(1), val.y, val.classes)
    mlp = nn.Sequential(nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 2))
    linear = DEFENSES.get("fine-pruning").run(cfg, DefenseInputs(val=flat, model=mlp))
    assert (conv.curve.kind, conv.curve.layer, conv.curve.channels) == ("conv", "0", 4)
    assert (linear.curve.kind, linear.curve.layer, linear.curve.channels) == ("linear", "0", 6)
    assert conv.model is not victim and linear.model is not mlp


@dataclass
class ShrinkConfig:
    name: str = "shrink"
    label: str | None = None
    factor: float = 0.5

    def validate(self, where: str = "defense") -> None:
        if not (isinstance(self.factor, float) and 0 < self.factor <= 1):
            raise PoisonlabError(f"{where}.factor must be in (0, 1], got {self.factor!r}")


def shrink(cfg: ShrinkConfig, ctx: DefenseInputs) -> DefenseOutcome:
    model = copy.deepcopy(ctx.model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(cfg.factor)
    return DefenseOutcome(model, extra={"factor": cfg.factor})


@pytest.fixture
def shrink_registered():
    register_defense(DefenseSpec("shrink", "scale every weight", ShrinkConfig, shrink, "model-repair",
                                 frozenset({"torch-layers"})))
    yield
    unregister_defense("shrink")


def test_a_defense_registered_from_outside_runs_everywhere(experiment, shrink_registered):
    victim = experiment[4]
    before = [p.clone() for p in victim.parameters()]
    out = defend([{"name": "shrink", "factor": 0.25}], experiment)
    assert out.metrics["shrink"]["factor"] == 0.25 and out.rows[1]["defense"] == "shrink"
    assert all(torch.equal(a, b) for a, b in zip(before, victim.parameters()))  # the suspect model is untouched
    assert parse_defenses([{"name": "shrink", "label": "s4", "factor": 0.25}])[0].cfg.factor == 0.25
    with pytest.raises(PoisonlabError, match=r"^defenses\[0\]\.factor must be in \(0, 1\], got 2\.0$"):
        parse_defenses([{"name": "shrink", "factor": 2.0}])


def test_one_set_of_defaults_in_both_worlds():
    for name in DEFENSES.names():
        subpop = parse_defenses([{"name": name}])[0]
        assert subpop.cfg == check_defenses([{"name": name}])[0][1] and subpop.label == name, name
    ss = parse_defenses([{"name": "spectral-signatures"}])[0].cfg
    assert (ss.epsilon, ss.removal_factor, ss.rule) == (0.05, 1.5, "budget")
    assert parse_defenses(["activation-clustering"])[0].cfg.reduce == "ica"
    assert parse_defenses(["trim", {"name": "sever", "rounds": 2}, {"name": "trim", "label": "t", "keep_fraction": 0.9}
                           ])[1].params == {"remove_fraction": 0.01, "rounds": 2}
    with pytest.raises(PoisonlabError, match=r"^unknown key 'defenses\[0\]\.round' for sever \(did you mean 'rounds'\?\)"):
        parse_defenses([{"name": "sever", "round": 2}])
    assert np.isclose(check_defenses([{"name": "certified"}])[0][1].lam, 1.0)
