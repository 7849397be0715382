"""Grid files of ``poisonlab matrix``: read, validate and expand into cells.

A grid names its attack family with ``kind:`` (default ``backdoor``; ``badnets`` and ``subpop``
are accepted aliases; see :mod:`poisonlab.families`) and becomes a :class:`Grid` whose cells
are validated configs of that family, each with the config hash under which the run store
keeps its result. Every section is checked before any cell runs: unknown keys, sizes (cells,
values copied per cell) and the attack, defense and seed lists. What differs per family (the
attack entries, the base's forbidden keys, the cell config) comes from the family object.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import SEED_MAX, check_values, is_whole, need_int, one_key
from .config import MAX_DEFENSES, OutputConfig, from_dict, read_yaml
from .errors import PoisonlabError, did_you_mean, shown
from .families import FAMILIES, get_family

MAX_CELLS = 1000
"""At most this many (attack, seed) cells in a grid."""
MAX_CELL_VALUES = 2_000_000
"""At most this many config values over all cells (cells x values of base, defenses and an attack)."""
MAX_WORKERS = 1024
GRID_KEYS = ("name", "kind", "base", "attacks", "defenses", "seeds", "workers", "output")


@dataclass
class Cell:
    """One (attack, seed) experiment of the grid with its validated config and config hash."""

    attack: str
    seed: int
    config: Any
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
    family: Any = None
    workers: int | None = None

    @property
    def kind(self) -> str:
        """The family's name."""
        return self.family.name


def load_grid(path: str | Path, data_dir: str | Path | None = None, output_dir: str | Path | None = None,
              workers: int | None = None, overrides: list[str] | None = None) -> Grid:
    """Read and validate a grid YAML file (every cell's config is checked; nothing runs).
    ``overrides`` are ``--set`` values on the grid file's keys (``base.train.epochs=2``)."""
    from .config import apply_overrides

    raw = apply_overrides(read_yaml(path), overrides or [])
    return grid_from_dict(raw, data_dir=data_dir, output_dir=output_dir, workers=workers)


def grid_from_dict(raw: dict[str, Any], data_dir: str | Path | None = None,
                   output_dir: str | Path | None = None, workers: int | None = None) -> Grid:
    """Validate a grid mapping and build every cell's config (of the grid's family); one-line errors.

    ``workers`` (subpopulation grids only) overrides the grid's ``workers:`` key.
    """
    if not isinstance(raw, dict):
        raise PoisonlabError(f"a grid must be a mapping of {', '.join(GRID_KEYS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in GRID_KEYS:
            hint = did_you_mean(key, list(GRID_KEYS)) if isinstance(key, str) and len(key) <= 100 else ""
            raise PoisonlabError(f"unknown grid key '{one_key(key)}'{hint}; allowed: {', '.join(GRID_KEYS)}")
    check_values(raw)
    family = _check_kind(raw.get("kind", "backdoor"))
    name = raw.get("name", "matrix")
    if not isinstance(name, str) or not name.strip():
        raise PoisonlabError(f"grid key 'name' must be a non-empty string, got {shown(name)}")
    n_workers = _check_workers(workers if workers is not None else raw.get("workers"))
    base = _check_base(raw.get("base"), family)
    attacks = _check_attacks(raw.get("attacks"), family)
    defenses_raw, defense_names = _check_defenses(raw.get("defenses"), family)
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
            cell_raw = family.grid_cell(name, base, label, section, defenses_raw, seed, output, n_workers)
            cfg = _validated_base(family, cell_raw)
            chash = family.cell_hash(cfg)
            if chash in seen and seen[chash] != label:
                raise PoisonlabError(f"attacks '{one_key(seen[chash])}' and '{one_key(label)}' are the same experiment; "
                                     f"list it once")
            seen[chash] = label
            cells.append(Cell(label, seed, cfg, chash))
    return Grid(name, attacks, defense_names, seeds, output, cells, copy.deepcopy(raw), family, n_workers)


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


def _check_kind(kind: Any) -> Any:
    """The family a grid's ``kind:`` names."""
    from .families import ALIASES

    try:
        return get_family(kind)
    except PoisonlabError:
        known = [*FAMILIES.names(), *ALIASES]
        hint = did_you_mean(kind, known) if isinstance(kind, str) and len(kind) <= 100 else ""
        raise PoisonlabError(f"unknown grid kind {shown(kind)}{hint}; choose one of {', '.join(FAMILIES.names())} "
                             f"(badnets and subpop are accepted as their older names)") from None


def _check_workers(workers: Any) -> int | None:
    if workers is None:
        return None
    if not is_whole(workers) or workers < 1:
        raise PoisonlabError(f"workers must be an integer >= 1 (or left out: one per core), got {shown(workers)}")
    return need_int(workers, "workers", 1, MAX_WORKERS)


def _check_base(base: Any, family: Any) -> dict[str, Any]:
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise PoisonlabError(f"grid key 'base' must be {family.base_help}, got {shown(base)}")
    for key, why in family.not_in_base.items():
        if key in base:
            raise PoisonlabError(f"base must not hold '{key}': {why}")
    return copy.deepcopy(base)


def _check_attacks(attacks: Any, family: Any) -> dict[str, dict[str, Any]]:
    example = family.attack_example
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
        family.check_grid_attack(tag, section)
        out[label] = copy.deepcopy(section)
    return out


def _check_defenses(raw: Any, family: Any) -> tuple[list[Any], list[str]]:
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
    return copy.deepcopy(raw), family.grid_defense_labels(raw)


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


def _validated_base(family: Any, raw: dict[str, Any]) -> Any:
    """``raw`` as a validated config of ``family`` whose data set and model exist; errors name the base."""
    from .data import DATASETS, READERS
    from .models import check_model_name

    try:
        cfg = family.config_from(raw)
        if cfg.data.name not in READERS:
            DATASETS.get(cfg.data.name)
        check_model_name(cfg.model.name)
        family.check_cell(cfg)
    except PoisonlabError as exc:
        raise PoisonlabError(f"base: {exc}") from None
    return cfg
