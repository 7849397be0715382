"""Grid files of ``poisonlab matrix``: read, validate and expand into cells.

A grid (see :mod:`poisonlab.matrix` for both kinds) becomes a :class:`Grid` whose cells are
validated experiment or subpopulation configs, each with the config hash under which the
run store keeps its result. Every section is checked before any cell runs: unknown keys,
sizes (cells, values copied per cell) and the attack, defense and seed lists.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attacks import build_attack
from .attacks.pruning_aware import pruning_aware_config
from .checks import SEED_MAX, check_values, is_whole, need_int, one_key
from .config import MAX_DEFENSES, ExperimentConfig, OutputConfig, from_dict, read_yaml
from .data import DATASETS
from .defend import check_defenses
from .errors import PoisonlabError, did_you_mean, shown
from .experiment import experiment_hash
from .models import MODELS
from .subpop.config import SubpopConfig
from .subpop.defended import parse_defenses
from .subpop.experiment import subpop_config_hash

GRID_KINDS = ("badnets", "subpop")
MAX_CELLS = 1000
"""At most this many (attack, seed) cells in a grid."""
MAX_CELL_VALUES = 2_000_000
"""At most this many config values over all cells (cells x values of base, defenses and an attack)."""
MAX_WORKERS = 1024
GRID_KEYS = ("name", "kind", "base", "attacks", "defenses", "seeds", "workers", "output")
_NOT_IN_BASE = {
    "attack": "list attacks under the grid's attacks: mapping",
    "defenses": "list defenses under the grid's defenses: list",
    "seed": "list seeds under the grid's seeds: list",
    "name": "name the grid with its top-level name:",
    "output": "set output under the grid's top-level output:",
}
_NOT_IN_SUBPOP_BASE = {
    "subpopulations": "set subpopulations in each attack entry (attacks.LABEL.subpopulations)",
    "attack": "set alphas and the poison label in each attack entry (attacks.LABEL.attack)",
    **{k: v for k, v in _NOT_IN_BASE.items() if k != "attack"},
    "workers": "set workers at the grid's top level or with --workers",
}
# the keys of a subpop attack entry: which subpopulations are attacked and with which poisons
SUBPOP_ATTACK_KEYS = ("subpopulations", "attack")
@dataclass
class Cell:
    """One (attack, seed) experiment of the grid with its validated config and config hash."""

    attack: str
    seed: int
    config: ExperimentConfig | SubpopConfig
    hash: str


@dataclass
class Grid:
    """A validated grid: its cells in run order (attack by attack, seed by seed)."""

    name: str
    attacks: dict[str, dict[str, Any]]
    defenses: list[str]
    seeds: list[int]
    output: OutputConfig
    cells: list[Cell]
    raw: dict[str, Any] = field(default_factory=dict)
    kind: str = "badnets"
    workers: int | None = None


def load_grid(path: str | Path, data_dir: str | Path | None = None, output_dir: str | Path | None = None,
              workers: int | None = None) -> Grid:
    """Read and validate a grid YAML file (every cell's config is checked; nothing runs)."""
    return grid_from_dict(read_yaml(path), data_dir=data_dir, output_dir=output_dir, workers=workers)


def grid_from_dict(raw: dict[str, Any], data_dir: str | Path | None = None,
                   output_dir: str | Path | None = None, workers: int | None = None) -> Grid:
    """Validate a grid mapping and build every cell's config (:class:`ExperimentConfig` for a
    ``badnets`` grid, :class:`~poisonlab.subpop.config.SubpopConfig` for a ``subpop`` one); one-line errors.

    ``workers`` (subpop grids only) overrides the grid's ``workers:`` key.
    """
    if not isinstance(raw, dict):
        raise PoisonlabError(f"a grid must be a mapping of {', '.join(GRID_KEYS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in GRID_KEYS:
            hint = did_you_mean(key, list(GRID_KEYS)) if isinstance(key, str) and len(key) <= 100 else ""
            raise PoisonlabError(f"unknown grid key '{one_key(key)}'{hint}; allowed: {', '.join(GRID_KEYS)}")
    check_values(raw)
    kind = _check_kind(raw.get("kind", "badnets"))
    name = raw.get("name", "matrix")
    if not isinstance(name, str) or not name.strip():
        raise PoisonlabError(f"grid key 'name' must be a non-empty string, got {shown(name)}")
    n_workers = _check_workers(workers if workers is not None else raw.get("workers"), kind)
    base = _check_base(raw.get("base"), kind)
    attacks = _check_attacks(raw.get("attacks"), kind)
    defenses_raw, defense_names = _check_defenses(raw.get("defenses"), kind)
    seeds = _check_seeds(raw.get("seeds"))
    _check_sizes(raw)
    output = from_dict(OutputConfig, raw.get("output"), "output")
    if output_dir is not None:
        output.dir = str(output_dir)
    if data_dir is not None and isinstance(base.get("data") or {}, dict):
        base["data"] = {**(base.get("data") or {}), "dir": str(data_dir)}

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for label, section in attacks.items():
        for seed in seeds:
            cfg: ExperimentConfig | SubpopConfig
            if kind == "subpop":
                cfg = _subpop_cell_config(name, base, label, section, defenses_raw, seed, output, n_workers)
                chash = subpop_config_hash(cfg)
            else:
                cfg = _cell_config(name, base, label, section, defenses_raw, seed, output)
                chash = experiment_hash(cfg.to_dict())
            if chash in seen and seen[chash] != label:
                raise PoisonlabError(f"attacks '{one_key(seen[chash])}' and '{one_key(label)}' are the same experiment; "
                                     f"list it once")
            seen[chash] = label
            cells.append(Cell(label, seed, cfg, chash))
    return Grid(name, attacks, defense_names, seeds, output, cells, copy.deepcopy(raw), kind, n_workers)


def _values(x: Any, stop: int) -> int:
    """Values in a raw config section (aliases counted as often as reached), counting up to ``stop``."""
    stack, n = [x], 0
    while stack and n < stop:
        v = stack.pop()
        n += 1
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return n


def _check_sizes(raw: dict[str, Any]) -> None:
    """Bound what the grid builds before building it: at most :data:`MAX_CELLS` cells, and at
    most :data:`MAX_CELL_VALUES` config values over all cells (each cell copies base and defenses)."""
    attacks, seeds = raw.get("attacks"), raw.get("seeds")
    if not isinstance(attacks, dict) or not isinstance(seeds, list):
        return  # their own checks name what is wrong
    cells = len(attacks) * len(seeds)
    if cells > MAX_CELLS:
        raise PoisonlabError(f"the grid has {len(attacks)} attacks x {len(seeds)} seeds = {cells} cells; at most "
                             f"{MAX_CELLS} are allowed")
    shared = _values(raw.get("base"), MAX_CELL_VALUES) + _values(raw.get("defenses"), MAX_CELL_VALUES)
    largest = max((_values(a, MAX_CELL_VALUES) for a in attacks.values()), default=0)
    if cells * (shared + largest) > MAX_CELL_VALUES:
        raise PoisonlabError(f"the grid's {cells} cells would hold {cells * (shared + largest)} config values "
                             f"(each copies base, defenses and its attack); at most {MAX_CELL_VALUES}")


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in GRID_KINDS:
        hint = did_you_mean(kind, list(GRID_KINDS)) if isinstance(kind, str) and len(kind) <= 100 else ""
        raise PoisonlabError(f"unknown grid kind {shown(kind)}{hint}; choose badnets (the default) or subpop")
    return kind


def _check_workers(workers: Any, kind: str) -> int | None:
    if workers is None:
        return None
    if kind != "subpop":
        raise PoisonlabError("workers (grid key or --workers) sets the parallel retrainings of subpop cells; "
                             "remove it from this badnets grid, or set kind: subpop")
    if not is_whole(workers) or workers < 1:
        raise PoisonlabError(f"workers must be an integer >= 1 (or left out: one per core), got {shown(workers)}")
    return need_int(workers, "workers", 1, MAX_WORKERS)


def _check_base(base: Any, kind: str = "badnets") -> dict[str, Any]:
    if base is None:
        base = {}
    what = "a subpop config mapping (data:, model:)" if kind == "subpop" else \
        "an experiment config mapping (data:, model:, train:, ...)"
    if not isinstance(base, dict):
        raise PoisonlabError(f"grid key 'base' must be {what}, got {shown(base)}")
    for key, why in (_NOT_IN_SUBPOP_BASE if kind == "subpop" else _NOT_IN_BASE).items():
        if key in base:
            raise PoisonlabError(f"base must not hold '{key}': {why}")
    return copy.deepcopy(base)


def _check_attacks(attacks: Any, kind: str = "badnets") -> dict[str, dict[str, Any]]:
    example = ("featurematch: {subpopulations: {kind: feature-match}, attack: {alphas: [1.0]}}" if kind == "subpop"
               else "badnets-pattern: {name: badnets, p: 0.1}")
    if not isinstance(attacks, dict) or not attacks:
        raise PoisonlabError(f"grid key 'attacks' must be a non-empty mapping of label -> attack section "
                             f"(e.g. {example})")
    out = {}
    for label, section in attacks.items():
        if not isinstance(label, str) or not label.strip():
            raise PoisonlabError(f"attack labels must be non-empty strings, got {shown(label)}")
        tag = one_key(label)
        if not isinstance(section, dict):
            raise PoisonlabError(f"attacks.{tag} must be an attack section mapping (e.g. {example}), "
                                 f"got {shown(section)}")
        if kind == "subpop":
            _check_subpop_attack(tag, section)
        else:
            try:
                build_attack(section)
            except PoisonlabError as exc:
                raise PoisonlabError(f"attacks.{tag}: {exc}") from None
        out[label] = copy.deepcopy(section)
    return out


def _check_subpop_attack(label: str, section: dict[str, Any]) -> None:
    """An attack entry of a subpop grid sets ``subpopulations:`` and ``attack:`` only (Jagielski et
    al., CCS 2021: how subpopulations are found, Sec. 4.1; poison sizes and label, Sec. 4.2)."""
    others = {f.name for f in dataclasses.fields(SubpopConfig)} - set(SUBPOP_ATTACK_KEYS)
    for key in section:
        if key in SUBPOP_ATTACK_KEYS:
            continue
        if key in others:
            where = _NOT_IN_SUBPOP_BASE.get(key, "set it in the grid's base: (all attacks share data and model)")
            raise PoisonlabError(f"attacks.{label} must not set '{key}' (an attack entry sets only "
                                 f"{' and '.join(SUBPOP_ATTACK_KEYS)}): {where}")
        hint = did_you_mean(key, list(SUBPOP_ATTACK_KEYS)) if isinstance(key, str) and len(key) <= 100 else ""
        raise PoisonlabError(f"unknown key 'attacks.{label}.{one_key(key)}'{hint}; "
                             f"an attack entry may set: {', '.join(SUBPOP_ATTACK_KEYS)}")
    try:  # the entry over the default config: its own keys and values, before any base is read
        from_dict(SubpopConfig, copy.deepcopy(section)).validate()
    except PoisonlabError as exc:
        raise PoisonlabError(f"attacks.{label}: {exc}") from None


def _check_defenses(raw: Any, kind: str) -> tuple[list[Any], list[str]]:
    """The ``defenses:`` list as given (what goes into each cell) and the labels of its defenses."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise PoisonlabError(f"grid key 'defenses' must be a list of defense sections, got {shown(raw)}")
    if len(raw) > MAX_DEFENSES:
        raise PoisonlabError(f"grid key 'defenses' lists {len(raw)} entries; at most {MAX_DEFENSES} are allowed")
    for item in raw:
        names = [item] if isinstance(item, str) else [item.get("name"), item.get("label")] if isinstance(item, dict) \
            else []
        if "none" in names:
            raise PoisonlabError("the defense label 'none' is reserved for the undefended model (always included)")
    if kind == "subpop":
        return copy.deepcopy(raw), [spec.label for spec in parse_defenses(raw)]
    return raw, [n for n, _ in check_defenses(raw)]


def _check_seeds(seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds:
        raise PoisonlabError(f"grid key 'seeds' must be a non-empty list of integers, got {shown(seeds)}")
    if len(seeds) > MAX_CELLS:
        raise PoisonlabError(f"grid key 'seeds' lists {len(seeds)} seeds; at most {MAX_CELLS}")
    for s in seeds:
        if not is_whole(s) or s < 0:
            raise PoisonlabError(f"seeds must be integers >= 0, got {shown(s)}")
        need_int(s, "seeds", 0, SEED_MAX, "each seed")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise PoisonlabError(f"seeds lists {', '.join(map(str, dupes))} more than once; give each seed once")
    return list(seeds)


def _cell_config(name: str, base: dict[str, Any], label: str, attack: dict[str, Any],
                 defenses: list[dict[str, Any]], seed: int, output: OutputConfig) -> ExperimentConfig:
    raw = copy.deepcopy(base)
    raw.update(name=f"{name}-{label}", seed=seed, attack=copy.deepcopy(attack), defenses=copy.deepcopy(defenses),
               output=dataclasses.asdict(output))
    cfg = _validated_base(ExperimentConfig, raw)
    if defenses and cfg.data.val_fraction <= 0:
        raise PoisonlabError("base: defenses decide on a clean validation split; set data.val_fraction > 0")
    return cfg


def _subpop_cell_config(name: str, base: dict[str, Any], label: str, attack: dict[str, Any], defenses: list[Any],
                        seed: int, output: OutputConfig, workers: int | None) -> SubpopConfig:
    raw = copy.deepcopy(base)
    raw.update(copy.deepcopy(attack))
    raw.update(name=f"{name}-{label}", seed=seed, workers=workers, defenses=copy.deepcopy(defenses),
               output=dataclasses.asdict(output))
    return _validated_base(SubpopConfig, raw)  # attack entries and defenses were checked on their own


def _validated_base(cls: type, raw: dict[str, Any]) -> Any:
    """``raw`` as a validated ``cls`` config whose data set and model exist; errors name the base."""
    try:
        cfg = from_dict(cls, raw)
        cfg.validate()
        DATASETS.get(cfg.data.name)
        MODELS.get(cfg.model.name)
        if isinstance(cfg, ExperimentConfig) and cfg.pruning_aware is not None:
            pruning_aware_config(cfg.pruning_aware, cfg.train)
    except PoisonlabError as exc:
        raise PoisonlabError(f"base: {exc}") from None
    return cfg
