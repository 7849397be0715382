"""The one defense registry: :data:`DEFENSES` of :class:`DefenseSpec`, the inputs every defense
gets (:class:`DefenseInputs`) and the needs a defense declares (:func:`check_needs`).

**One calling convention.** ``spec.run(cfg, ctx) -> DefenseOutcome`` for every defense, where
``cfg`` is the validated config dataclass of the spec (``spec.from_config(raw)``) and ``ctx`` a
:class:`DefenseInputs`: the suspect model, the poisoned training set and its poison mask, how
to retrain the victim's learner on a subset of rows, the clean validation split (the only data
a defense may decide on), the clean and triggered test sets (measured for the report only),
seed and device. The outcome holds the defended model (a torch ``nn.Module``, never the suspect
model itself), the boolean mask of the training rows removed when the defense removes rows,
and its summary.

**Kinds.** ``filter`` removes training rows and retrains; ``robust-training`` trains a
defended model another way (TRIM, SEVER, the certified smoothed ridge); ``model-repair`` acts
on the trained model (pruning, fine-tuning, Fine-Pruning, Neural Cleanse's unlearning);
``input-detector`` guards the model at run time (STRIP).

**Needs** (:data:`NEEDS`): what a defense requires of the experiment. The experiment offers a
set of them (:func:`offered_by`), and :func:`check_needs` turns a missing one into a single
line naming the need and what the experiment has instead.

A new defense is a config dataclass (``name``, ``label``, its keys, ``validate(where)``), a
``run(cfg, ctx)`` and one :func:`register_defense` call.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import from_dict
from ..data.base import Dataset
from ..errors import PoisonlabError, did_you_mean, shown
from ..registry import Registry

if TYPE_CHECKING:
    from ..attacks.base import AttackTestSet
    from .pruning_config import DefenseOutcome

__all__ = ["DEFENSES", "KINDS", "NEEDS", "ConfiguredDefense", "DefenseInputs", "DefenseSpec", "FilterContext",
           "Offered", "check_label", "check_needs", "offered_by", "parse_defense_item", "register_defense",
           "unregister_defense"]

#: what a defense does, one of these
KINDS = ("filter", "robust-training", "model-repair", "input-detector")

#: the vocabulary of needs: need -> what it is, as the error message reads ("needs ...")
NEEDS: dict[str, str] = {
    "images": "image inputs",
    "torch-layers": "a torch model with named conv/linear layers",
    "validation": "a clean validation split",
    "row-gradients": "per-row gradients of a torch model (an nn.Linear output layer)",
    "binary-labels": "binary labels (2 classes)",
    "retrain": "a way to retrain the victim's learner on a subset of its rows",
}


@dataclass
class DefenseInputs:
    """What every defense gets (one object for all kinds).

    The first five fields are positional in this order, as the experiment has always built
    its filter context: ``DefenseInputs(train, poison_mask, retrain, target, val)``.
    """

    train: Dataset | None = None
    """The (possibly poisoned) training set the suspect model was trained on."""
    poison_mask: torch.Tensor | None = None
    """Which rows of ``train`` are poison (bool); read for the report only."""
    retrain: Callable[[Dataset, str], nn.Module] | None = None
    """``retrain(dataset, name)``: the victim's own learner and training on ``dataset``."""
    target: int | None = None
    """The attack's target class, when single-target (the report's "clean target rows removed")."""
    val: Dataset | None = None
    """The clean validation split: the only data a defense decides on."""
    model: nn.Module | None = None
    """The suspect model (never modified: a defense returns a defended copy)."""
    test: Dataset | None = None
    """The clean test set (report only)."""
    attack_set: AttackTestSet | None = None
    """The attack's triggered test set (report only)."""
    seed: int = 0
    device: torch.device | str = "cpu"
    cache: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """What defenses of this victim share (the representations of its training and validation
    rows, :func:`~poisonlab.defenses.filter_defenses.shared_representations`), each entry keyed
    by what determines it."""

    def with_model(self, model: nn.Module | None, **changes: Any) -> DefenseInputs:
        """A copy with ``model`` (and any other field in ``changes``) replaced."""
        return dataclasses.replace(self, model=model, **changes)


#: the name the experiment has always used for the inputs of a filtering defense
FilterContext = DefenseInputs


class Offered(frozenset):
    """The needs an experiment offers, with what it has for each need it does not offer
    (``has[need]``: the second half of :func:`check_needs`'s message)."""

    has: dict[str, str]

    @classmethod
    def of(cls, needs: Any = (), has: dict[str, str] | None = None) -> Offered:
        out = cls(needs)
        out.has = dict(has or {})
        return out


def _layers(model: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, types) for m in model.modules())


def _model_name(model: Any) -> str:
    name = getattr(model, "name", None)
    kind = type(model).__name__
    return f"{kind} '{name}'" if isinstance(name, str) and name != kind else kind


def offered_by(ctx: DefenseInputs) -> Offered:
    """The needs ``ctx`` offers (and, for the others, what it has instead)."""
    offered: set[str] = set()
    has: dict[str, str] = {}
    data = next((d for d in (ctx.train, ctx.val, ctx.test) if d is not None), None)
    if data is not None:
        shape = tuple(data.x.shape[1:])
        if len(shape) == 3:
            offered.add("images")
        else:
            has["images"] = (f"this experiment's data are tabular (shape {shape})" if len(shape) == 1
                             else f"this experiment's inputs have shape {shape}, not (C, H, W)")
        if data.num_classes == 2:
            offered.add("binary-labels")
        else:
            has["binary-labels"] = f"this experiment's data have {data.num_classes} classes"
    else:
        has["images"] = has["binary-labels"] = "this experiment gives no data"
    model = ctx.model
    if model is None:
        has["torch-layers"] = has["row-gradients"] = "this experiment gives no model"
    elif not isinstance(model, nn.Module):
        has["torch-layers"] = has["row-gradients"] = (f"this experiment's model is a {type(model).__name__}, "
                                                      f"not a torch nn.Module")
    else:
        if _layers(model, (nn.Conv2d, nn.Linear)):
            offered.add("torch-layers")
        else:
            has["torch-layers"] = f"this experiment's model ({_model_name(model)}) has no Conv2d or Linear layer"
        if _layers(model, (nn.Linear,)) and any(True for _ in model.parameters()):
            offered.add("row-gradients")
        else:
            has["row-gradients"] = f"this experiment's model ({_model_name(model)}) has no nn.Linear layer"
    if ctx.val is not None and len(ctx.val) > 0:
        offered.add("validation")
    else:
        has["validation"] = "this experiment has no clean validation split (set data.val_fraction > 0)"
    if ctx.retrain is not None and ctx.train is not None:
        offered.add("retrain")
    else:
        has["retrain"] = "this experiment gives no way to retrain its victim"
    return Offered.of(offered, has)


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    ``config``: its config dataclass (fields ``name`` and ``label`` first, then its keys with
    their defaults; ``validate(where="defense")`` checks them with one-line errors; optional
    ``extra_needs()`` adds needs that depend on the settings, e.g. ``validation`` for a
    validation rule). ``run(cfg, ctx)``: the defense, returning a
    :class:`~poisonlab.defenses.pruning_config.DefenseOutcome`. ``kind``: one of :data:`KINDS`;
    ``needs``: a subset of :data:`NEEDS`.
    """

    name: str
    description: str
    config: type
    run: Callable[[Any, DefenseInputs], DefenseOutcome]
    kind: str
    needs: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"defense '{self.name}': kind {self.kind!r} is not one of {', '.join(KINDS)}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"defense '{self.name}': unknown needs {sorted(unknown)}; the vocabulary: "
                             f"{', '.join(NEEDS)}")
        object.__setattr__(self, "needs", frozenset(self.needs))
        names = [f.name for f in dataclasses.fields(self.config)]
        if names[:2] != ["name", "label"]:
            raise ValueError(f"defense '{self.name}': its config dataclass must start with the fields name, label")

    def needs_of(self, cfg: Any = None) -> frozenset[str]:
        """The needs of this defense with settings ``cfg`` (the declared ones plus ``cfg.extra_needs()``)."""
        extra = cfg.extra_needs() if cfg is not None and hasattr(cfg, "extra_needs") else ()
        return self.needs | frozenset(extra)

    def from_config(self, raw: dict[str, Any] | None = None, where: str = "defense") -> Any:
        """The validated config of this defense from its ``defense:`` section (values coerced to
        the fields' types first, as every ``poisonlab run`` config section is)."""
        data = dict(raw or {})
        data.setdefault("name", self.name)
        cfg = from_dict(self.config, data, where)
        check_label(cfg.label, f"{where}.label")
        cfg.validate(where=where)
        return cfg

    def from_item(self, raw: dict[str, Any], where: str) -> Any:
        """The validated config from a list item given as written (the subpopulation sweep's
        ``defenses:`` items): unknown keys are named with the defense, and every value is checked
        by the config's own ``validate`` before the field types are enforced."""
        names = [f.name for f in dataclasses.fields(self.config)]
        for key in raw:
            if key not in names:
                hint = did_you_mean(key, names) if isinstance(key, str) else ""
                raise PoisonlabError(f"unknown key '{where}.{key}' for {self.name}{hint}; allowed: {', '.join(names)}")
        data = {**raw, "name": self.name}
        check_label(data.get("label"), f"{where}.label")
        try:  # the values as written: the config's own one-line errors come first
            self.config(**data).validate(where=where)
        except (TypeError, ValueError, AttributeError):
            pass  # a value of the wrong type its validate cannot compare: from_dict names it
        cfg = from_dict(self.config, data, where)
        cfg.validate(where=where)
        return cfg

    def check(self, cfg: Any, offered: set[str], label: str | None = None) -> None:
        """:func:`check_needs` of this defense with settings ``cfg``."""
        check_needs(self, offered, cfg, label)


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register_defense(spec: DefenseSpec) -> DefenseSpec:
    """Add ``spec`` to :data:`DEFENSES` (a name registers once)."""
    return DEFENSES.register(spec.name)(spec)


def unregister_defense(name: str) -> None:
    """Remove a defense registered by :func:`register_defense` (tests, plug-ins that unload)."""
    DEFENSES._items.pop(name, None)


def check_needs(spec: DefenseSpec, offered: set[str], cfg: Any = None, label: str | None = None) -> None:
    """One-line error unless ``offered`` holds every need of ``spec`` (with settings ``cfg``):
    ``defense 'strip' needs image inputs; this experiment's data are tabular (shape (108,))``.
    The first missing need (in the order of :data:`NEEDS`) is named, with what the experiment
    has instead when ``offered`` is an :class:`Offered`."""
    needs = spec.needs_of(cfg)
    missing = [n for n in NEEDS if n in needs and n not in offered]
    if not missing:
        return
    need = missing[0]
    has = getattr(offered, "has", {}).get(need) or f"this experiment offers only: {', '.join(sorted(offered)) or 'none'}"
    raise PoisonlabError(f"defense '{label or spec.name}' needs {NEEDS[need]}; {has}")


_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def check_label(label: Any, where: str = "defense.label") -> None:
    """One-line error unless ``label`` is null or 1-40 letters, digits, ``-``, ``_``, ``.`` other than
    ``none`` (it names a table row, result columns and curve files; ``none`` is the undefended row)."""
    if label is not None and not (isinstance(label, str) and _LABEL.fullmatch(label) and label != "none"):
        raise PoisonlabError(f"{where} must be a non-empty string other than 'none' of 1-40 letters, digits, "
                             f"'-', '_' or '.', got {shown(label)} (it names the table row, result columns and "
                             f"curve files)")


@dataclass
class ConfiguredDefense:
    """One entry of a ``defenses:`` list: the registered defense, its label and validated config."""

    name: str
    label: str
    cfg: Any

    @property
    def spec(self) -> DefenseSpec:
        return DEFENSES.get(self.name)

    @property
    def needs(self) -> frozenset[str]:
        return self.spec.needs_of(self.cfg)

    @property
    def params(self) -> dict[str, Any]:
        """The settings (every config field but ``name`` and ``label``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("name", "label")}

    def run(self, ctx: DefenseInputs) -> DefenseOutcome:
        return self.spec.run(self.cfg, ctx)

    def to_dict(self) -> dict[str, Any]:
        """The config item with every default filled (``cfg.to_dict()`` when the config has one)."""
        raw = self.cfg.to_dict() if hasattr(self.cfg, "to_dict") else dataclasses.asdict(self.cfg)
        return {**raw, "name": self.name, "label": self.label}


def parse_defense_item(item: Any, where: str) -> ConfiguredDefense:
    """One ``defenses:`` item (a name, or ``{name: ..., label?: ..., ...}``) as written in a
    subpopulation config, validated by its registered config dataclass."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise PoisonlabError(f"{where} must be a mapping like {{name: trim}}, got {shown(item)}")
    name = item.get("name")
    names = DEFENSES.names()
    if name is None:
        raise PoisonlabError(f"{where} needs a name: one of {', '.join(names)}")
    if not isinstance(name, str) or name not in DEFENSES:
        hint = did_you_mean(name, names) if isinstance(name, str) and len(name) <= 100 else ""
        raise PoisonlabError(f"{where}.name: unknown defense {shown(name)}{hint}; choose one of {', '.join(names)}")
    spec = DEFENSES.get(name)
    cfg = spec.from_item(item, where)
    return ConfiguredDefense(name, cfg.label or name, cfg)
