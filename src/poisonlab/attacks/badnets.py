"""BadNets (Gu, Dolan-Gavitt, Garg 2017, arXiv 1708.06733).

Pick floor(p * |D_train|) training images at random (optionally only from source
classes), stamp the trigger on copies, give them the attacker's labels, and **add**
them to the training set (``mode: replace`` overwrites the originals instead).

Label modes:
- ``single-target``: images of the source class(es) -> ``target``; ``source: null``
  means every class but the target.
- ``all-to-all``: class i -> (i + 1) mod C.
- ``random``: each poisoned image (of the source class(es), default every class) gets a
  uniformly random label other than its own (the
  seed's random-target traffic-sign attack); the attack succeeds on a triggered test image
  when it is misclassified, whatever the wrong label.

Built from a config section (:meth:`BadNets.from_config`), a :class:`BadNetsConfig`, or
keywords (``BadNets(p=0.1, target=0, trigger={"kind": "pattern"})``); ``poison`` takes the
pipeline's ``(train, rng)`` or plain ``(x, y)`` arrays (:func:`~.base.arrays_or_dataset`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..config import from_dict
from ..data.base import Dataset
from ..checks import is_number, need_int
from ..errors import PoisonlabError, shown
from ..triggers import Trigger, build_trigger
from .base import ATTACKS, AttackTestSet, PoisonResult, arrays_or_dataset


MAX_CLASSES = 100_000
"""Class indices in an attack config are in 0..MAX_CLASSES (the data set's own range is checked later)."""


@dataclass
class BadNetsConfig:
    """``attack:`` keys of BadNets."""

    name: str = "badnets"
    p: float = 0.1
    mode: Literal["add", "replace"] = "add"
    labels: Literal["single-target", "all-to-all", "random"] = "single-target"
    target: int = 0
    source: int | list[int] | None = None
    trigger: dict[str, Any] = field(default_factory=lambda: {"kind": "pattern"})


@ATTACKS.register("badnets")
class BadNets:
    """The BadNets training-set poisoning attack (see module docstring).

    >>> attack = BadNets.from_config({"p": 0.5, "target": 1, "trigger": {"kind": "single-pixel"}})
    >>> ds = Dataset(torch.zeros(4, 1, 5, 5), torch.tensor([0, 0, 2, 2]), ["a", "b", "c"])
    >>> result = attack.poison(ds, np.random.default_rng(0))
    >>> len(result.dataset), result.n_poison, result.dataset.y[-2:].tolist()
    (6, 2, [1, 1])
    >>> x, y, mask = BadNets(p=0.5, target=1).poison(np.zeros((4, 5, 5)), np.array([0, 0, 2, 2]))
    >>> x.shape, y[-2:].tolist(), mask.tolist()
    ((6, 5, 5), [1, 1], [False, False, False, False, True, True])
    """

    name = "badnets"
    family = "backdoor"

    def __init__(self, cfg: BadNetsConfig | dict[str, Any] | None = None, **params: Any) -> None:
        """Store and check the parameters: a :class:`BadNetsConfig`, an ``attack:`` mapping, or
        the config's keys as keywords (``p``, ``mode``, ``labels``, ``target``, ``source``, ``trigger``)."""
        if cfg is not None and params:
            raise PoisonlabError("BadNets takes a BadNetsConfig or keyword parameters, not both")
        if cfg is None or isinstance(cfg, dict):
            cfg = from_dict(BadNetsConfig, {"name": "badnets", **(params if cfg is None else cfg)}, "attack")
        elif not isinstance(cfg, BadNetsConfig):
            raise PoisonlabError(f"BadNets takes a BadNetsConfig, a mapping or keywords, got {shown(cfg)}")
        if not (is_number(cfg.p) and 0 < cfg.p <= 1):
            raise PoisonlabError(f"attack.p must be in (0, 1], got {shown(cfg.p)}")
        need_int(cfg.target, "attack.target", 0, MAX_CLASSES, "a class index")
        sources = cfg.source if isinstance(cfg.source, list) else [] if cfg.source is None else [cfg.source]
        if len(sources) > MAX_CLASSES:
            raise PoisonlabError(f"attack.source lists {len(sources)} classes; at most {MAX_CLASSES}")
        for s in sources:
            need_int(s, "attack.source", 0, MAX_CLASSES, "a class index")
        self.cfg = cfg
        self.trigger: Trigger = build_trigger(cfg.trigger)

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> "BadNets":
        return cls(from_dict(BadNetsConfig, dict(raw), "attack"))

    @classmethod
    def make(cls, **params: Any) -> BadNets:
        """``BadNets(**params)``: the ``attack:`` keys as keywords."""
        return cls(**params)

    def get_params(self) -> dict[str, Any]:
        """The attack's parameters (its config keys but ``name``)."""
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "name"}

    def __repr__(self) -> str:
        return "BadNets(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    # -- label mapping -------------------------------------------------------------
    def _sources(self, num_classes: int) -> list[int]:
        src = self.cfg.source
        if src is None:
            return [c for c in range(num_classes) if c != self.cfg.target]
        return [src] if isinstance(src, int) else list(src)

    def attacker_labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label the attacker wants for each true label ``y`` (-1: not attacked)."""
        if self.cfg.labels == "all-to-all" or (self.cfg.labels == "random" and self.cfg.source is None):
            return (y + 1) % num_classes  # random: placeholder, drawn in `_random_other_labels`
        out = torch.full_like(y, -1)
        attacked = torch.isin(y, torch.tensor(self._sources(num_classes), dtype=y.dtype))
        out[attacked] = self.cfg.target if self.cfg.labels == "single-target" else ((y[attacked] + 1) % num_classes)
        return out

    def check(self, data: Dataset) -> None:
        """Validate class indices and trigger size against the data set."""
        c = data.num_classes
        if self.cfg.labels == "single-target":
            if not 0 <= self.cfg.target < c:
                raise PoisonlabError(f"attack.target {self.cfg.target} is out of range; the data set has classes 0..{c - 1}")
            for s in self._sources(c):
                if not 0 <= s < c:
                    raise PoisonlabError(f"attack.source {s} is out of range; the data set has classes 0..{c - 1}")
                if s == self.cfg.target:
                    raise PoisonlabError(f"attack.source {s} equals the target; pick other source classes")
        elif self.cfg.source is not None and self.cfg.labels != "random":
            raise PoisonlabError(f"attack.source applies to labels 'single-target' and 'random' only; remove it "
                                 f"for '{self.cfg.labels}'")
        if self.cfg.labels == "random" and self.cfg.source is not None:
            for s in self._sources(c):
                if not 0 <= s < c:
                    raise PoisonlabError(f"attack.source {s} is out of range; the data set has classes 0..{c - 1}")
        if not data.is_image:
            raise PoisonlabError("BadNets stamps an image trigger; the data set has no images (shape "
                                 f"{tuple(data.x.shape[1:])})")
        self.trigger.check_fits(tuple(data.x.shape[1:]))

    # -- poisoning -----------------------------------------------------------------
    @arrays_or_dataset
    def poison(self, train: Dataset, rng: np.random.Generator) -> PoisonResult:
        """Add (or substitute) floor(p * |D_train|) triggered, relabelled copies.

        Also ``poison(x, y, seed=0, classes=None) -> (x_poisoned, y_poisoned, poison_mask)``
        on numpy arrays or torch tensors of images (N, C, H, W) or (N, H, W) in [0, 1]."""
        self.check(train)
        wanted = self.attacker_labels(train.y, train.num_classes)
        candidates = (wanted >= 0).nonzero().flatten().numpy()
        n = int(np.floor(self.cfg.p * len(train)))
        if n == 0:
            raise PoisonlabError(f"attack.p = {self.cfg.p} of {len(train)} training images is 0 poison images; raise p")
        if n > len(candidates):
            raise PoisonlabError(
                f"attack.p = {self.cfg.p} asks for {n} poison images but only {len(candidates)} training images "
                f"are of the source classes; lower p to at most {len(candidates) / len(train):.4f}"
            )
        chosen = torch.from_numpy(np.sort(rng.choice(candidates, size=n, replace=False)))
        x_poison = self.trigger.apply(train.x[chosen])
        y_poison = wanted[chosen]
        if self.cfg.labels == "random":
            y_poison = _random_other_labels(train.y[chosen], train.num_classes, rng)
        if self.cfg.mode == "add":
            x = torch.cat([train.x, x_poison])
            y = torch.cat([train.y, y_poison])
            mask = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
            source = torch.cat([torch.arange(len(train)), chosen])
            meta = {k: np.concatenate([v, v[chosen.numpy()]]) for k, v in train.meta.items()}
        else:
            x, y = train.x.clone(), train.y.clone()
            x[chosen], y[chosen] = x_poison, y_poison
            mask = torch.zeros(len(train), dtype=torch.bool)
            mask[chosen] = True
            source = torch.arange(len(train))
            meta = dict(train.meta)
        return PoisonResult(Dataset(x, y, list(train.classes), meta), mask, source)

    def evaluation_set(self, test: Dataset) -> AttackTestSet:
        """Triggered copies of the attacked test images (target-class images excluded)."""
        wanted = self.attacker_labels(test.y, test.num_classes)
        keep = (wanted >= 0) & (wanted != test.y)
        return AttackTestSet(self.trigger.apply(test.x[keep]), wanted[keep], test.y[keep], keep.nonzero().flatten(),
                             untargeted=self.cfg.labels == "random")

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        if c.labels == "all-to-all":
            labels = "all-to-all (i -> i+1 mod C)"
        elif c.labels == "random":
            src = "every class" if c.source is None else f"class(es) {c.source}"
            labels = f"random target ({src} -> a random other label; any wrong label counts)"
        else:
            src = "every class but the target" if c.source is None else f"class(es) {c.source}"
            labels = f"single-target ({src} -> {c.target})"
        return {"attack": "badnets", "p": c.p, "mode": c.mode, "labels": labels, "trigger": c.trigger.get("kind")}


def _random_other_labels(y: torch.Tensor, num_classes: int, rng: np.random.Generator) -> torch.Tensor:
    """A uniformly random label different from each ``y`` (vectorised: y + U{1..C-1} mod C)."""
    shift = rng.integers(1, num_classes, size=len(y))
    return (y + torch.from_numpy(shift)) % num_classes
