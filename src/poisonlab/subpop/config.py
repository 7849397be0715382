"""Config of a subpopulation experiment (``poisonlab subpop CONFIG.yaml``), strictly validated.

Jagielski et al., CCS 2021: the threat model's data split (Sec. 3), how subpopulations are
found (Sec. 4.1), the label-flipping poisons (Sec. 4.2) and the victim's learner (Sec. 5).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..attacks.badnets import MAX_CLASSES
from ..checks import (
    MAX_ROWS,
    SEED_MAX,
    check_model_options,
    is_whole,
    need_int,
    need_number,
)
from ..config import OutputConfig
from ..errors import PoisonlabError, shown
from .defended import ConfiguredDefense, parse_defenses
from .learners import LearnerSpec

MAX_TEXT_FEATURES = 100_000
MAX_WORKERS = 1024
MAX_CLUSTERS = 100_000
MAX_DIMS = 10_000
MAX_LIST = 1000
MAX_ALPHA = 100.0


@dataclass
class SubpopDataConfig:
    """``data:``: the data set, the victim / attacker split of its training rows and the clean
    validation split carved from the victim's rows (``val_fraction``; 0 = none, the victim
    trains on all its rows; defenses that decide on clean data need it > 0)."""

    name: str = "adult"
    dir: str | None = None
    download: bool = False
    attacker_fraction: float = 0.5
    val_fraction: float = 0.0
    train_limit: int | None = None
    text_features: int = 2000
    path: str | None = None  # the file or folder of a reader (image-folder, csv, parquet, npz)
    options: dict[str, Any] = field(default_factory=dict)  # the reader's options


@dataclass
class SubpopulationsConfig:
    """``subpopulations:``: FeatureMatch (categorical columns) or ClusterMatch (a representation)."""

    kind: Literal["feature-match", "cluster-match"] = "feature-match"
    features: list[str] = field(default_factory=lambda: ["education", "race", "sex"])
    min_test: int = 10
    max_test: int | None = 100
    n_clusters: int = 100
    pca_dims: int | None = 10
    layer: str | None = "auto"
    limit: int | None = None


@dataclass
class SubpopAttackConfig:
    """``attack:``: poison sizes alpha (poisons = round(alpha * attacker rows)) and their label."""

    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    label: int | Literal["least-likely"] = "least-likely"


@dataclass
class SubpopConfig:
    """A whole subpopulation-poisoning experiment."""

    name: str = "subpopulation"
    seed: int = 0
    workers: int | None = None
    data: SubpopDataConfig = field(default_factory=SubpopDataConfig)
    model: LearnerSpec = field(default_factory=LearnerSpec)
    subpopulations: SubpopulationsConfig = field(default_factory=SubpopulationsConfig)
    attack: SubpopAttackConfig = field(default_factory=SubpopAttackConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # ``defenses:``: [name | {name: a registered defense (trim, sever, spectral-signatures, activation-clustering,
    # certified, fine-pruning, ...), label?, ...its config keys}] (:mod:`poisonlab.subpop.defended`); fixed
    # thresholds, filled with the registered defaults by validate()
    defenses: list[Any] = field(default_factory=list)

    def validate(self) -> None:
        d, s, a = self.data, self.subpopulations, self.attack
        checks = [
            (0 < d.attacker_fraction < 1, f"data.attacker_fraction must be in (0, 1), got {d.attacker_fraction}"),
            (0 <= d.val_fraction < 1,
             f"data.val_fraction must be in [0, 1) (0.1: a tenth of the victim's rows), got {d.val_fraction}"),
            (d.train_limit is None or d.train_limit >= 2, f"data.train_limit must be >= 2, got {d.train_limit}"),
            (d.text_features >= 1, f"data.text_features must be >= 1, got {d.text_features}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.workers is None or self.workers >= 1, f"workers must be >= 1 (or null: one per core), got {self.workers}"),
            (s.min_test >= 0, f"subpopulations.min_test must be >= 0, got {s.min_test}"),
            (s.max_test is None or s.max_test >= s.min_test,
             f"subpopulations.max_test ({s.max_test}) must be >= min_test ({s.min_test})"),
            (s.n_clusters >= 1, f"subpopulations.n_clusters must be >= 1, got {s.n_clusters}"),
            (s.pca_dims is None or s.pca_dims >= 0, f"subpopulations.pca_dims must be >= 0 or null, got {s.pca_dims}"),
            (s.limit is None or s.limit >= 1, f"subpopulations.limit must be >= 1 or null, got {s.limit}"),
            (len(a.alphas) > 0 and all(x > 0 for x in a.alphas),
             f"attack.alphas must be a non-empty list of numbers > 0, got {shown(a.alphas)}"),
            (len(set(a.alphas)) == len(a.alphas), f"attack.alphas lists a value twice: {shown(a.alphas)}"),
            (a.label == "least-likely" or (isinstance(a.label, int) and a.label >= 0),
             f"attack.label must be 'least-likely' or a class index >= 0, got {shown(a.label)}"),
            (s.kind == "cluster-match" or len(s.features) > 0, "subpopulations.features must name at least one column"),
        ]
        for ok, message in checks:
            if not ok:
                raise PoisonlabError(message)
        self._check_bounds()
        from ..data.user_data import check_data_config

        check_data_config(d)  # a reader's path and options, without reading a file
        self.model.train.validate("model.train")
        if self.model.retrain is not None:
            self.model.retrain.validate("model.retrain")
        self.model.validate()
        specs = parse_defenses(self.defenses)  # each item by its registered config dataclass, bounds included
        for i, spec in enumerate(specs):
            if "validation" in spec.needs and d.val_fraction == 0:
                raise PoisonlabError(f"defenses[{i}] ({spec.name}) decides on a clean validation split, but "
                                     f"data.val_fraction is 0; set data.val_fraction > 0 (e.g. 0.1)")
            hidden = self.model.options.get("hidden", [256]) if isinstance(self.model.options, dict) else None
            if spec.name in ("pruning", "fine-pruning") and self.model.name == "mlp" and hidden in ([], ()):
                raise PoisonlabError(f"defenses[{i}] ({spec.name}) prunes hidden units, but the model has no hidden "
                                     f"layer (mlp hidden: [], logistic regression); give it one or drop the defense")
        self.defenses = [d.to_dict() for d in specs]

    def _check_bounds(self) -> None:
        """The upper bounds of every number (its lower bound is checked first, in :meth:`validate`)."""
        d, s, a = self.data, self.subpopulations, self.attack
        if d.train_limit is not None:
            need_int(d.train_limit, "data.train_limit", 2, MAX_ROWS)
        need_int(d.text_features, "data.text_features", 1, MAX_TEXT_FEATURES)
        need_int(self.seed, "seed", 0, SEED_MAX)
        if self.workers is not None:
            need_int(self.workers, "workers", 1, MAX_WORKERS)
        for key, lo, hi in (("min_test", 0, MAX_ROWS), ("max_test", 0, MAX_ROWS), ("n_clusters", 1, MAX_CLUSTERS),
                            ("pca_dims", 0, MAX_DIMS), ("limit", 1, MAX_ROWS)):
            if getattr(s, key) is not None:
                need_int(getattr(s, key), f"subpopulations.{key}", lo, hi)
        if len(s.features) > MAX_LIST:
            raise PoisonlabError(f"subpopulations.features lists {len(s.features)} columns; at most {MAX_LIST}")
        if len(a.alphas) > MAX_LIST:
            raise PoisonlabError(f"attack.alphas lists {len(a.alphas)} values; at most {MAX_LIST}")
        for alpha in a.alphas:
            need_number(alpha, "attack.alphas", 0, MAX_ALPHA, low_open=True, what="poisons per attacker row")
        if is_whole(a.label):
            need_int(a.label, "attack.label", 0, MAX_CLASSES, "a class index")
        check_model_options(self.model.options)

    def defense_specs(self) -> list[ConfiguredDefense]:
        """The validated ``defenses:`` list."""
        return parse_defenses(self.defenses)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_subpop_config(path: str | Path | None = None, overrides: list[str] | None = None,
                       **top: Any) -> SubpopConfig:
    """Read, override (``--set``) and validate a subpopulation config."""
    from ..families import load_any_config

    return load_any_config(path, overrides, family="subpopulation", **top)[1]
