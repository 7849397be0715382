"""Config schema: YAML -> typed dataclasses, strictly validated.

Every unknown key, wrong type or malformed file becomes a one-line
:class:`PoisonlabError` naming the key and what is allowed. ``--set a.b=value``
overrides are applied to the raw mapping before validation.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from . import safe_yaml
from .checks import (INT_LIMIT, MAX_ROWS, SEED_MAX, check_model_options, check_values, is_number, is_whole, need_int,
                     need_number, one_key)
from .errors import PoisonlabError, did_you_mean, one_line, shown
from .train import TrainConfig
from .transfer import TransferConfig


@dataclass
class DataConfig:
    """``data:``: which data set, where it lives, how much training data becomes validation."""

    name: str = "digits"
    dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    train_limit: int | None = None
    path: str | None = None  # the file or folder of a reader (image-folder, csv, parquet, npz)
    options: dict[str, Any] = field(default_factory=dict)  # the reader's options
    classes: list[int] = field(default_factory=list)  # keep only these classes, relabelled 0..k-1 in this order


@dataclass
class ModelConfig:
    """``model:``: a registered network and its options; ``weights``: a safetensors file it starts
    from (a feature extractor trained on other data; the last linear layer may differ and is
    then trained afresh: :mod:`poisonlab.models.pretrained`)."""

    name: str = "digits-cnn"
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass
class OutputConfig:
    """``output:``: where run folders go and what they keep."""

    dir: str = "runs"
    save_weights: bool = True
    plots: bool = True
    cache_baseline: bool = True


@dataclass
class AnalysisConfig:
    """``analysis:``: the backdoor-neuron analysis of BadNets Sec. 5.3 (run for every CNN BadNet).

    ``layer``: conv layer to read (null: the last one); a channel is flagged when its
    triggered-minus-clean mean is ``z`` standard deviations above the layer's median and
    its clean mean is at most the ``clean_quantile`` quantile of the layer's clean means.
    """

    backdoor_neurons: bool = True
    layer: str | None = None
    traffic_signs: bool = False
    """BadNets Sec. 4's table by sign type (stop, speed limit, warning, other): the 43 GTSRB
    classes and a single-source, single-target attack."""
    z: float = 3.0
    clean_quantile: float = 0.5


MAX_VICTIM_SEEDS = 64


@dataclass
class VictimConfig:
    """``victim:``: how the models trained on poisoned data are trained, when that differs from
    the clean reference. ``init: reference`` starts from the clean reference's weights;
    ``trainable: last`` trains only the model's last linear layer, the rest frozen in eval mode
    (the transfer setting of Shafahi et al. 2018, Sec. 4.1); ``train`` overrides keys of
    ``train:`` for the victims (and their retrainings after a filter); ``seeds`` lists further
    victims, retrained on the same poisoned set with these seeds (Geiping et al. 2021 measure a
    brew over several victims)."""

    init: Literal["scratch", "reference"] = "scratch"
    trainable: Literal["all", "last"] = "all"
    train: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    @property
    def is_default(self) -> bool:
        return self.init == "scratch" and self.trainable == "all" and not self.train

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this section's ``train`` overrides (validated as ``victim.train``)."""
        merged = from_dict(TrainConfig, {**dataclasses.asdict(base), **self.train}, "victim.train")
        merged.validate("victim.train")
        return merged

    def validate(self, seed: int, base: TrainConfig) -> None:
        self.train_config(base)
        if len(self.seeds) > MAX_VICTIM_SEEDS:
            raise PoisonlabError(f"victim.seeds lists {len(self.seeds)} seeds; at most {MAX_VICTIM_SEEDS}")
        for s in self.seeds:
            need_int(s, "victim.seeds", 0, SEED_MAX)
        if len(set(self.seeds)) != len(self.seeds) or seed in self.seeds:
            raise PoisonlabError(f"victim.seeds must be distinct and differ from the run's seed {seed} (the main "
                                 f"victim's), got {self.seeds}")


@dataclass
class ExperimentConfig:
    """A whole experiment: data -> attack -> train (victim and clean baseline) -> metrics."""

    name: str = "experiment"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: dict[str, Any] | None = None
    defenses: list[dict[str, Any]] = field(default_factory=list)
    pruning_aware: dict[str, Any] | None = None
    victim: VictimConfig = field(default_factory=VictimConfig)
    transfer: TransferConfig | None = None
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        need_number(self.data.val_fraction, "data.val_fraction", 0, 1, high_open=True)
        if self.data.classes:
            if len(self.data.classes) < 2 or len(set(self.data.classes)) != len(self.data.classes):
                raise PoisonlabError(f"data.classes must list at least two distinct class indices, got {self.data.classes}")
            for k in self.data.classes:
                need_int(k, "data.classes", 0, 100_000, "a class index")
        if self.data.train_limit is not None:
            need_int(self.data.train_limit, "data.train_limit", 1, MAX_ROWS)
        from .data.user_data import check_data_config

        check_data_config(self.data)  # a reader's path and options, without reading a file
        need_int(self.seed, "seed", 0, SEED_MAX)
        check_model_options(self.model.options)
        from .models import check_model_name

        check_model_name(self.model.name)  # registered, or an import path naming a model class
        if self.model.weights is not None and not (isinstance(self.model.weights, str) and self.model.weights):
            raise PoisonlabError(f"model.weights must be the path of a .safetensors file, got {shown(self.model.weights)}")
        self.train.validate()
        self.victim.validate(self.seed, self.train)
        if self.transfer is not None:
            self.transfer.validate()
        if not (is_number(self.analysis.z) and self.analysis.z >= 0):
            raise PoisonlabError(f"analysis.z must be >= 0, got {shown(self.analysis.z)}")
        need_number(self.analysis.z, "analysis.z", 0, 1000)
        need_number(self.analysis.clean_quantile, "analysis.clean_quantile", 0, 1)
        if len(self.defenses) > MAX_DEFENSES:
            raise PoisonlabError(f"defenses lists {len(self.defenses)} entries; at most {MAX_DEFENSES} are allowed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_DEFENSES = 32


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        others = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is not None and len(others) == 1:  # Optional[X]: X's own, more precise error
            return _coerce(value, others[0], where)
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except PoisonlabError:
                continue
        raise PoisonlabError(f"config key '{where}' must be {_type_name(tp)}, got {shown(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise PoisonlabError(
                f"config key '{where}' must be one of {', '.join(map(str, allowed))}, got {shown(value)}"
                + _hint(value, [str(a) for a in allowed])
            )
        return value
    if tp is type(None):
        if value is not None:
            raise PoisonlabError(f"config key '{where}' must be null, got {shown(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise PoisonlabError(f"config key '{where}' must be a list, got {shown(value)}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PoisonlabError(f"config key '{where}' must be a mapping, got {shown(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise PoisonlabError(f"config key '{where}' must be true or false, got {shown(value)}")
        return value
    if tp is int:
        if not is_whole(value):
            raise PoisonlabError(f"config key '{where}' must be an integer, got {shown(value)}")
        if not -INT_LIMIT < value < INT_LIMIT:
            raise PoisonlabError(f"config key '{where}' must be an integer within ±2**63, got {shown(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PoisonlabError(f"config key '{where}' must be a number, got {shown(value)}")
        if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT or not math.isfinite(value):
            raise PoisonlabError(f"config key '{where}' must be a finite number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise PoisonlabError(f"config key '{where}' must be a string, got {shown(value)}")
        return value
    return value


T = typing.TypeVar("T")


def _hint(value: Any, known: list[str]) -> str:
    """A did-you-mean hint for a short string ``value`` (none for anything else)."""
    return did_you_mean(value, known) if isinstance(value, str) and len(value) <= 100 else ""


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    >>> from_dict(DataConfig, {"name": "mnist"}).name
    'mnist'
    """
    label = where or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PoisonlabError(f"'{label}' must be a mapping of keys to values, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{one_key(key)}" if where else one_key(key)
        if key not in names:
            raise PoisonlabError(
                f"unknown config key '{path}'{_hint(key, names)}; allowed under '{label}': {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)  # type: ignore[call-arg]


MAX_KEY_PARTS = 8


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is parsed as YAML (bounded:
    :func:`poisonlab.safe_yaml.load_override`; the key has at most 8 dotted parts)."""
    if not isinstance(text, str) or "=" not in text:
        raise PoisonlabError(f"--set needs key=value, got {shown(text)} (e.g. --set train.epochs=5)")
    if len(text) > safe_yaml.MAX_OVERRIDE_CHARS:
        raise PoisonlabError(f"--set {shown(text, 40)} has {len(text)} characters, more than the "
                             f"{safe_yaml.MAX_OVERRIDE_CHARS} allowed; put large settings in the config file")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise PoisonlabError(f"--set has an empty key in {shown(text)}")
    if len(parts) > MAX_KEY_PARTS:
        raise PoisonlabError(f"--set key {shown(key)} has {len(parts)} dotted parts; at most {MAX_KEY_PARTS}")
    value = safe_yaml.load_override(raw, f"--set {one_line(key.strip(), 60)}") if raw.strip() else None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping (returns a new mapping)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise PoisonlabError(f"--set {shown(text)}: '{one_key(p)}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file with the bounded loader (:mod:`poisonlab.safe_yaml`: size, depth,
    aliases); a missing, malformed or oversized file is a one-line error."""
    p = Path(path)
    what = f"config file '{one_line(str(p), 200)}'"
    try:
        found = p.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        found = False
    if not found:
        raise PoisonlabError(f"{what} not found; give the path of a YAML file (see examples/)")
    raw = safe_yaml.load(safe_yaml.read_bounded(p, what), what)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PoisonlabError(f"config file '{p}' must hold a mapping of sections (data:, model:, ...), not {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **top: Any) -> ExperimentConfig:
    """Read, override and validate an experiment config.

    Keyword arguments (e.g. ``seed=1``, ``device="cpu"``) set top-level keys when not None.
    """
    return load_validated(ExperimentConfig, path, overrides, top)


def load_validated(cls: type[T], path: str | Path | None, overrides: list[str] | None, top: dict[str, Any]) -> T:
    """Config dataclass ``cls`` from a YAML file (or nothing), ``--set`` overrides and top-level
    keys (``None`` values skipped): every number checked, then every key, then ``validate()``."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    for key, value in top.items():
        if value is not None:
            raw[key] = value
    check_values(raw)
    cfg = from_dict(cls, raw)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def config_hash(cfg: dict[str, Any]) -> str:
    """A short stable hash of a config mapping (for the run index and the baseline cache)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
