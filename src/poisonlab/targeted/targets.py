"""What every targeted (integrity) poisoning attack shares: which test inputs it aims at, which
training rows of the poison class it may alter, and the poisoned training set it returns.

Targeted poisoning makes chosen target inputs be classified as the attacker's class while the
model behaves normally elsewhere; the poisons keep their true label (clean-label: Shafahi et
al. 2018, Geiping et al. 2021). The targets are test inputs, named by the attacker
(``targets:``): ``random`` rows of any class but the poison class, rows of one ``class``, or
explicit ``rows``; by default only rows the clean reference classifies correctly (a target that
is already wrong proves nothing). The poison class (the label the attacker wants) is
``poison_class``, or drawn at random when null. Every draw comes from the cell's generator in a
fixed order (poison class, targets, poison rows), so two attacks of one seed and budget (an
attack and its random-noise control) pick the same targets and the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..attacks.base import AttackTestSet, PoisonResult
from ..attacks.configured import ConfiguredAttack
from ..checks import is_number, need_int
from ..config import from_dict
from ..data.base import Dataset
from ..errors import PoisonlabError, shown

MAX_CLASSES = 100_000
MAX_TARGETS = 10_000


@dataclass
class TargetsConfig:
    """``attack.targets:``: how the target test inputs are picked."""

    select: Literal["random", "class", "rows", "cluster"] = "random"
    n: int = 1
    true_class: int | None = None
    """``select: class``: the class the targets are drawn from."""
    rows: list[int] = field(default_factory=list)
    """``select: rows``: the test rows themselves."""
    correct_only: bool = True
    """Draw only among test rows the clean reference classifies correctly."""
    clusters: int = 100
    """``select: cluster``: k-means clusters of the training rows' features (ClusterMatch)."""
    pca_dims: int = 10
    """``select: cluster``: PCA dimensions before k-means (0: none)."""
    layer: str = "auto"
    """``select: cluster``: the feature layer (``auto``: the input of the last linear layer)."""

    def validate(self) -> None:
        need_int(self.n, "attack.targets.n", 1, MAX_TARGETS)
        need_int(self.clusters, "attack.targets.clusters", 1, 100_000)
        need_int(self.pca_dims, "attack.targets.pca_dims", 0, 100_000)
        if self.select == "class":
            if self.true_class is None:
                raise PoisonlabError("attack.targets.select 'class' needs attack.targets.true_class (a class index)")
            need_int(self.true_class, "attack.targets.true_class", 0, MAX_CLASSES, "a class index")
        elif self.true_class is not None:
            raise PoisonlabError("attack.targets.true_class applies to select: class only; remove it")
        if self.select == "rows":
            if not self.rows:
                raise PoisonlabError("attack.targets.select 'rows' needs attack.targets.rows (test row indices)")
            if len(self.rows) > MAX_TARGETS or len(set(self.rows)) != len(self.rows):
                raise PoisonlabError(f"attack.targets.rows must be at most {MAX_TARGETS} distinct test rows")
            for r in self.rows:
                need_int(r, "attack.targets.rows", 0, 10 ** 9, "a test row index")
        elif self.rows:
            raise PoisonlabError("attack.targets.rows applies to select: rows only; remove it")


class TargetedAttack(ConfiguredAttack):
    """Base of the targeted attacks: config handling, target choice, the evaluation set. A
    subclass sets ``name`` and ``config_class`` (a dataclass with ``name``, ``poison_class`` and
    ``targets`` keys and its own) and implements ``craft``."""

    family = "targeted"
    uses_reference = True
    appends = False
    """Poisons are new rows (copies of training rows) rather than altered ones."""
    name = "targeted"
    config_class: type = object

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.poison_class is not None:
            need_int(cfg.poison_class, "attack.poison_class", 0, MAX_CLASSES, "a class index")
        self.targets = from_dict(TargetsConfig, cfg.targets, "attack.targets")
        self.targets.validate()
        self.target_rows_: torch.Tensor | None = None
        self.poison_class_: int | None = None
        self.report_: dict[str, Any] = {}

    # -- checks before any training --------------------------------------------------
    def check(self, train: Dataset) -> None:
        c = train.num_classes
        pc, t = self.cfg.poison_class, self.targets
        if pc is not None and not 0 <= pc < c:
            raise PoisonlabError(f"attack.poison_class {pc} is out of range; the data set has classes 0..{c - 1}")
        if t.true_class is not None:
            if not 0 <= t.true_class < c:
                raise PoisonlabError(f"attack.targets.true_class {t.true_class} is out of range; "
                                     f"the data set has classes 0..{c - 1}")
            if t.true_class == pc:
                raise PoisonlabError(f"attack.targets.true_class equals attack.poison_class ({pc}): a target of the "
                                     f"poison class is already classified as the attacker wants; pick another class")
        count = self.poison_count(train)
        if pc is not None and count is not None:  # a budget the poison class cannot meet fails before training
            own = int((train.y == pc).sum())
            if count > own or count < 1:
                raise PoisonlabError(f"{self.name} asks for {count} poison images but the poison class {pc} has "
                                     f"{own} training rows; " + ("lower the budget" if count > own else "raise it"))

    def poison_count(self, train: Dataset) -> int | None:
        """How many training images the attack alters (None: not known before it runs)."""
        return None

    def n_targets(self) -> int:
        return len(self.targets.rows) if self.targets.select == "rows" else self.targets.n

    def check_model(self, model: Any) -> None:
        """Checks that need the model (a feature layer's name); none by default."""

    # -- choices (in this order from the cell's generator) -----------------------------
    def choose(self, train: Dataset, reference: Any, rng: np.random.Generator) -> tuple[int, torch.Tensor]:
        """The poison class and the target test rows."""
        test = reference.test if reference is not None else None
        if test is None:
            raise PoisonlabError(f"{self.name} picks its targets from the test rows; none were given")
        c = train.num_classes
        pc = self.cfg.poison_class
        if pc is None:
            taken = {self.targets.true_class} if self.targets.true_class is not None else set()
            if self.targets.select == "rows":
                taken |= {int(v) for v in test.y[torch.tensor(self.targets.rows)[torch.tensor(self.targets.rows)
                                                                                  < len(test)]]}
            free = [k for k in range(c) if k not in taken]
            if not free:
                raise PoisonlabError("attack.targets.rows covers every class; no poison class is left (set "
                                     "attack.poison_class or pick fewer classes)")
            pc = int(rng.integers(c)) if not taken else int(rng.choice(free))
        if self.targets.select == "rows":
            rows = torch.tensor(self.targets.rows, dtype=torch.int64)
            if int(rows.max()) >= len(test):
                raise PoisonlabError(f"attack.targets.rows holds {int(rows.max())}; the test set has rows "
                                     f"0..{len(test) - 1}")
            if bool((test.y[rows] == pc).any()):
                raise PoisonlabError(f"attack.targets.rows includes test rows of the poison class {pc}; "
                                     f"they are classified as the attacker wants already")
            return pc, rows
        ok = test.y != pc
        if self.targets.select == "class":
            ok &= test.y == self.targets.true_class
        if self.targets.correct_only:
            from ..train import predict

            ok &= predict(reference.model, test.x, 512, reference.device, desc="targets: clean predictions") == test.y
        candidates = ok.nonzero().flatten().numpy()
        if self.targets.select == "cluster":
            from .cluster_targets import cluster_targets

            t = self.targets
            rows, picked = cluster_targets(train, test, candidates, t.n, t.clusters, t.pca_dims, t.layer, reference, rng)
            self.report_ = {**self.report_, **picked}
            return pc, rows
        if len(candidates) < self.targets.n:
            raise PoisonlabError(f"attack.targets.n = {self.targets.n} targets asked for but only {len(candidates)} test "
                                 f"rows qualify (not of the poison class {pc}"
                                 + (", correctly classified by the clean model" if self.targets.correct_only else "")
                                 + "); lower n")
        return pc, torch.from_numpy(rng.choice(candidates, size=self.targets.n, replace=False).astype(np.int64))

    def poison_rows(self, train: Dataset, poison_class: int, count: int, rng: np.random.Generator,
                    what: str = "attack.budget") -> torch.Tensor:
        """``count`` distinct training rows of ``poison_class`` (sorted), drawn from ``rng``."""
        own = (train.y == poison_class).nonzero().flatten().numpy()
        if count > len(own):
            raise PoisonlabError(f"{what} asks for {count} poison images but the poison class {poison_class} has "
                                 f"{len(own)} training rows; lower it")
        if count < 1:
            raise PoisonlabError(f"{what} gives 0 poison images of {len(train)} training rows; raise it")
        return torch.from_numpy(np.sort(rng.choice(own, size=count, replace=False)).astype(np.int64))

    # -- the pipeline's calls ----------------------------------------------------------
    def poison(self, train: Dataset, rng: np.random.Generator, reference: Any = None) -> PoisonResult:
        """Pick the poison class and targets, then ``craft`` the poisons (in place of training rows)."""
        self.check(train)
        self.report_ = {}
        if reference is None or reference.model is None:
            raise PoisonlabError(f"{self.name} needs the clean reference model as its surrogate")
        pc, rows = self.choose(train, reference, rng)
        self.poison_class_, self.target_rows_ = pc, rows
        target_x = reference.test.x[rows]
        idx, x_new, crafted = self.craft(train, pc, target_x, reference, rng)
        self.report_ = {**self.report_, **crafted}
        return append_rows(train, idx, x_new, pc) if self.appends else replace_rows(train, idx, x_new)

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, Any]]:
        """(training rows altered, their new inputs, what to report); the subclass's attack. When
        the attack ``appends``, the rows are the ones each new input was copied from, and the new
        inputs are added to the training set with the poison class's label."""
        raise NotImplementedError

    def evaluation_set(self, test: Dataset) -> AttackTestSet:
        """The targets, each wanted as the poison class."""
        if self.target_rows_ is None or self.poison_class_ is None:
            raise PoisonlabError(f"{self.name}: call poison() first; it picks the targets")
        rows = self.target_rows_
        return AttackTestSet(test.x[rows], torch.full((len(rows),), self.poison_class_, dtype=torch.int64),
                             test.y[rows], rows)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "poison_class": self.poison_class_,
                               "targets_select": self.targets.select}
        if self.target_rows_ is not None:
            out["target_rows"] = self.target_rows_.tolist()
        return {**out, **self.report_}


def replace_rows(train: Dataset, idx: torch.Tensor, x_new: torch.Tensor) -> PoisonResult:
    """``train`` with the images of rows ``idx`` replaced by ``x_new`` (labels kept: clean-label)."""
    x = train.x.clone()
    x[idx] = x_new.to(x.dtype)
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[idx] = True
    return PoisonResult(Dataset(x, train.y.clone(), list(train.classes), dict(train.meta)), mask,
                        torch.arange(len(train)))


def append_rows(train: Dataset, source: torch.Tensor, x_new: torch.Tensor, label: int) -> PoisonResult:
    """``train`` with the rows ``x_new`` (copies of the rows ``source``, changed) added and
    labelled ``label``; their metadata are their source rows'."""
    n = len(x_new)
    x = torch.cat([train.x, x_new.to(train.x.dtype)])
    y = torch.cat([train.y, torch.full((n,), int(label), dtype=train.y.dtype)])
    mask = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    src = source.numpy()
    meta = {k: np.concatenate([v, v[src]]) for k, v in train.meta.items()}
    return PoisonResult(Dataset(x, y, list(train.classes), meta), mask, torch.cat([torch.arange(len(train)), source]))


def perturbation_norms(new: torch.Tensor, old: torch.Tensor) -> dict[str, float]:
    """Mean and max ℓ∞ and ℓ2 norms (pixel range 1) of the per-image changes ``new - old``."""
    d = (new - old).reshape(len(new), -1).double()
    linf, l2 = d.abs().amax(1), d.norm(dim=1)
    return {"linf_mean": float(linf.mean()), "linf_max": float(linf.max()), "l2_mean": float(l2.mean()),
            "l2_max": float(l2.max())}


def need_fraction(value: Any, key: str) -> float:
    """``value`` as a float in (0, 1]; one-line error otherwise."""
    if not is_number(value) or not 0 < float(value) <= 1:
        raise PoisonlabError(f"{key} must be in (0, 1], got {shown(value)}")
    return float(value)


def need_torch(model: Any, name: str) -> None:
    """``model`` must be a torch network with parameters (its gradients are the attack's)."""
    from ..models.learners import is_torch

    if not is_torch(model):
        raise PoisonlabError(f"{name} differentiates through the model; {type(model).__name__} is not a torch network "
                             f"with parameters (use a CNN or MLP, or an attack for estimators: stingray, influence)")


def need_images(train: Dataset, name: str) -> None:
    if not train.is_image:
        raise PoisonlabError(f"{name} perturbs images; the data set has rows of shape {tuple(train.x.shape[1:])}")
