"""StingRay (Suciu, Marginean, Kaya, Daumé III, Dumitras, "When Does Machine Learning FAIL?
Generalized Transferability for Evasion and Poisoning Attacks", USENIX Security 2018, Sec. 4)
for feature-space learners, and for torch networks on images.

For a target ``t`` (a test row) and the class the attacker wants for it, the training rows of
that class are taken nearest first (Euclidean; Hamming on binary features). Each becomes a
candidate poison: up to ``max_copied`` (s̄) of the features where ``t`` is larger than the base
(the target's *active* features on binary data) are copied from ``t``, chosen at random. A
local copy of the victim's learner is retrained with the poisons so far plus the candidate; a
candidate whose retraining drops the local model's accuracy on the attacker's clean validation
rows by more than ``tau_ni`` (the negative-impact test) is discarded; otherwise it is kept. The
attack stops at the first retraining that gives the target the wanted class, or at
``max_poisons`` (N_max, a share of the training set) kept poisons, or after
``max_candidates`` x N_max candidates tried (discarded ones cost a refit too). Poisons are added as new
rows with the wanted label (copies of rows of that class). Several targets are attacked one
after the other, each against the clean rows plus the earlier targets' poisons.

On images (inputs of shape (N, C, H, W)) with a torch reference network the attack is the
image variant of :mod:`poisonlab.targeted.stingray_images`: bases nearest in the network's
feature space (``layer``), moved by ``steps`` signed-gradient steps inside an l_inf ball of
``eps`` towards the target's features, the local model its last linear layer retrained.
``max_copied`` applies to tabular rows only; ``eps``, ``steps`` and ``layer`` to images only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..checks import is_number, need_int
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .stingray_images import check_image_model, craft_images
from .targets import TargetedAttack, need_fraction, perturbation_norms


@dataclass
class StingRayConfig:
    """``attack:`` keys of StingRay."""

    name: str = "stingray"
    poison_class: int | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    max_poisons: float = 0.005
    """N_max as a share of the training set (0.5%)."""
    max_copied: int = 10
    """Tabular rows only: s̄, the most target features copied into one base."""
    tau_ni: float = 0.01
    """Largest drop of the local model's validation accuracy a kept poison may cause."""
    max_candidates: float = 4.0
    """Candidates tried per target, as a multiple of N_max (each costs one refit; discarded ones too)."""
    eps: float = 16 / 255
    """Images only: the l_inf radius of a poison's change (pixel range 1)."""
    steps: int = 100
    """Images only: signed-gradient steps (of 2.5 eps / steps) towards the target's features."""
    layer: str = "auto"
    """Images only: the feature layer (``auto``: the input of the last linear layer)."""


IMAGE_KEYS = {"eps": 16 / 255, "steps": 100, "layer": "auto"}
TABULAR_KEYS = {"max_copied": 10}


def _local_learner(model: Any) -> Any:
    from ..models.estimators import EstimatorModel

    if not isinstance(model, EstimatorModel):
        raise PoisonlabError(f"stingray retrains local copies of the victim's learner; it needs a scikit-learn learner "
                             f"(linear-svm, random-forest, logistic-regression, ...), got {type(model).__name__}")
    return model


@ATTACKS.register("stingray")
class StingRay(TargetedAttack):
    """StingRay's poisons for one or more targets (see module docstring)."""

    name = "stingray"
    config_class = StingRayConfig
    appends = True
    _images: bool | None = None
    """Whether ``check`` saw images (``check_model`` then checks the network), None before it."""

    def validate(self) -> None:
        need_fraction(self.cfg.max_poisons, "attack.max_poisons")
        need_int(self.cfg.max_copied, "attack.max_copied", 1, 1_000_000, "features")
        if not is_number(self.cfg.tau_ni) or not 0 <= float(self.cfg.tau_ni) <= 1:
            raise PoisonlabError(f"attack.tau_ni must be in [0, 1], got {shown(self.cfg.tau_ni)}")
        if not is_number(self.cfg.max_candidates) or not 1 <= float(self.cfg.max_candidates) <= 1000:
            raise PoisonlabError(f"attack.max_candidates must be in [1, 1000] (times N_max), "
                                 f"got {shown(self.cfg.max_candidates)}")
        need_fraction(self.cfg.eps, "attack.eps")
        need_int(self.cfg.steps, "attack.steps", 1, 100_000)
        if not isinstance(self.cfg.layer, str) or not self.cfg.layer:
            raise PoisonlabError(f"attack.layer must be a layer name or 'auto', got {shown(self.cfg.layer)}")

    def check(self, train: Dataset) -> None:
        images = train.x.dim() == 4
        if train.x.dim() != 2 and not images:
            raise PoisonlabError(_tabular_only(train))
        kind, other = ("images", TABULAR_KEYS) if images else ("tabular rows", IMAGE_KEYS)
        for key, default in other.items():
            if getattr(self.cfg, key) != default:
                raise PoisonlabError(f"attack.{key} does not apply to stingray on {kind}; remove it")
        self._images = images
        super().check(train)

    def check_model(self, model: Any) -> None:
        """Images need a torch network with the feature layer and a last linear layer; tabular
        rows a scikit-learn learner (checked before any training)."""
        from ..models.learners import is_torch

        net = is_torch(model)
        images = net if self._images is None else self._images  # before check(): judged by the model
        if images and not net:
            raise PoisonlabError(_images_need_torch(model))
        if images:
            check_image_model(model, self.cfg.layer)
        else:
            _local_learner(model)

    def poison(self, train: Dataset, rng: np.random.Generator, reference: Any = None) -> PoisonResult:
        if train.x.dim() == 4:
            from ..models.learners import is_torch

            model = None if reference is None else reference.model
            if model is None:  # no torch network: only the feature-copying variant, for tabular rows
                raise PoisonlabError(_tabular_only(train))
            if not is_torch(model):
                raise PoisonlabError(_images_need_torch(model))
        return super().poison(train, rng, reference)

    def craft(self, train: Dataset, poison_class: int, target_x: torch.Tensor, reference: Any,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        if train.x.dim() == 4:
            return craft_images(self.cfg, train, poison_class, target_x, reference)
        local = copy.deepcopy(_local_learner(reference.model))
        val = reference.val
        if val is None or len(val) == 0:
            raise PoisonlabError("stingray's negative-impact test reads the attacker's clean validation rows; "
                                 "set data.val_fraction > 0")
        c = self.cfg
        n_max = max(1, int(np.floor(float(c.max_poisons) * len(train))))
        clean_acc = _accuracy(local, val)  # the clean reference, trained on the clean rows
        x_all = train.x.double()
        own = (train.y == poison_class).nonzero().flatten()
        sources: list[int] = []
        poisons: list[torch.Tensor] = []
        per_target: list[dict[str, Any]] = []
        fits = 0
        for t in target_x.double():
            kept_before, success, discarded, tried = len(poisons), False, 0, 0
            budget = int(np.ceil(float(c.max_candidates) * n_max))
            order = own[torch.argsort(((x_all[own] - t) ** 2).sum(1), stable=True)]
            for b in order.tolist():
                if len(poisons) - kept_before >= n_max or tried >= budget:
                    break
                gap = torch.nonzero(t > x_all[b]).flatten().numpy()
                if len(gap) == 0:
                    continue  # nothing of the target to copy into this base
                chosen = rng.choice(gap, size=min(len(gap), int(c.max_copied)), replace=False)
                cand = x_all[b].clone()
                cand[torch.from_numpy(chosen)] = t[torch.from_numpy(chosen)]
                trial_x = torch.cat([x_all, *[p[None] for p in poisons], cand[None]])
                trial_y = torch.cat([train.y, torch.full((len(poisons) + 1,), poison_class, dtype=train.y.dtype)])
                local.fit_arrays(trial_x, trial_y, train.num_classes, reference.seed)
                fits += 1
                tried += 1
                if clean_acc - _accuracy(local, val) > float(c.tau_ni):
                    discarded += 1
                    continue
                poisons.append(cand)
                sources.append(b)
                if int(local(t[None].float()).argmax(1)) == poison_class:
                    success = True
                    break
            per_target.append({"poisons": len(poisons) - kept_before, "local_success": success,
                               "discarded_by_ni": discarded})
        if not poisons:
            discarded = sum(p["discarded_by_ni"] for p in per_target)
            if discarded:
                raise PoisonlabError(f"stingray's negative-impact test discarded all {discarded} candidate poisons "
                                     f"(each lowered the local model's validation accuracy by more than "
                                     f"attack.tau_ni = {float(c.tau_ni)}); raise attack.tau_ni")
            raise PoisonlabError("stingray found no row of the poison class to copy a target feature into")
        x_new = torch.stack(poisons).to(train.x.dtype)
        src = torch.tensor(sources, dtype=torch.int64)
        return src, x_new, {"n_poison_images": len(poisons), "n_max_per_target": n_max, "local_fits": fits,
                            "per_target": per_target, "clean_val_accuracy": clean_acc,
                            **{f"perturbation_{k}": v for k, v in perturbation_norms(x_new, train.x[src]).items()},
                            "features_changed_mean": float((x_new != train.x[src]).sum(1).float().mean())}


def _tabular_only(train: Dataset) -> str:
    return (f"stingray copies features of tabular rows, or moves images in a torch network's feature space; "
            f"the data set has inputs of shape {tuple(train.x.shape[1:])} and no torch network is given "
            f"(use a torch model for images, or a feature-space data set)")


def _images_need_torch(model: Any) -> str:
    return (f"stingray on images crafts poisons in a torch network's feature space; the reference is "
            f"{type(model).__name__}, not a torch network (use a CNN or MLP, or a scikit-learn learner "
            f"on a feature-space data set)")


def _accuracy(model: Any, data: Dataset) -> float:
    pred = model(data.x.float()).argmax(1)
    return float((pred == data.y).float().mean())
