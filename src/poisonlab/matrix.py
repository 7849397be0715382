"""The matrix: a grid of attacks x defenses x seeds, run as one command, summarised in one table.

A grid file (``poisonlab matrix GRID.yaml``) is of one of two kinds (``kind:``, default ``badnets``).

``kind: badnets`` (BadNets, Gu et al. 2017, and the defenses of :mod:`poisonlab.defend`)::

    name: digits-matrix
    base: {data: ..., model: ..., train: ...}     # an experiment config without attack/defenses/seed
    attacks: {badnets-pattern: {name: badnets, p: 0.1}, ...}   # label -> attack section
    defenses: [{name: fine-pruning, step: 4}, ...]            # "none" is always included
    seeds: [0, 1]
    output: {dir: runs}                            # applied to every cell

A *cell* is one (attack, seed) pair: one :func:`~poisonlab.experiment.run_experiment` whose
``defenses:`` list holds every defense of the grid, since the defenses of one attacked model
share its training. Every defense makes its decisions (pruning stop, fine-tuning, filtering
thresholds) on the clean validation split only (see :mod:`poisonlab.defend`). Table: per
attack and defense, clean accuracy and attack success.

``kind: subpop`` (subpopulation poisoning, Jagielski et al., CCS 2021; the defenses of its
Sec. 6 from :mod:`poisonlab.subpop.defended`)::

    name: adult-subpop
    kind: subpop
    base: {data: {name: adult}, model: {...}}    # a subpop config without subpopulations/attack/defenses/seed/workers
    attacks:                                     # label -> the attack part of a subpop config, only these two keys:
      featurematch: {subpopulations: {kind: feature-match, limit: 12}, attack: {alphas: [1.0, 2.0]}}
      clustermatch: {subpopulations: {kind: cluster-match, n_clusters: 12}, attack: {label: least-likely}}
    defenses: [trim, {name: sever, rounds: 2}]   # subpop defense entries ("none" is always included)
    seeds: [0, 1]
    workers: 2                                   # parallel retrainings per cell (also --workers); default one per core

A cell is one :func:`~poisonlab.subpop.experiment.run_subpop_experiment` (every subpopulation
x alpha, each task running every defense). ``workers`` is left out of the cell's hash and
cannot change its numbers (the sweep's tasks are seeded by position). Table: per attack,
alpha and defense, the mean target damage of the 5 subpopulations worst *without* defense
(the same ones for every defense, as in the subpop defenses table), mean collateral, clean
accuracy and the shares of poisons / clean rows removed. Defense thresholds are fixed
parameters or read off the clean validation split (``data.val_fraction``); no test row is
read to choose them.

For both kinds a cell whose config hash already has a finished run in the store is reused,
never recomputed, so an interrupted or extended grid only runs what is missing. The matrix
never looks at test results to choose anything, it only averages them. The table's spread
is the sample standard deviation over seeds (``ddof=1``), shown as ``–`` for a single seed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, report
from .attacks import build_attack
from .config import ExperimentConfig, OutputConfig, config_hash, from_dict, read_yaml
from .data import DATASETS
from .defend import check_defenses
from .errors import PoisonlabError, did_you_mean
from .experiment import experiment_hash, run_experiment
from .models import MODELS
from .resources import peak_cuda_mb, peak_rss_mb
from .store import index_run, list_runs, open_run, read_metrics
from .subpop.config import SubpopConfig
from .subpop.defended import defense_summary, parse_defenses
from .subpop.experiment import run_subpop_experiment, subpop_config_hash

GRID_KINDS = ("badnets", "subpop")
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
SUBPOP_MEASURES = ("target_worst_k", "collateral_all", "clean_accuracy", "poisons_removed", "clean_removed")
STD_NOTE = "std: sample standard deviation over seeds (ddof=1); – for a single seed"
SUBPOP_NOTE = ("every number: mean ± std over seeds; target damage: mean over the k subpopulations worst "
               "without defense (the same ones for every defense), accuracy lost against the clean model A(D) "
               "(Jagielski et al., CCS 2021); collateral, clean accuracy and rows removed: means over all attacked "
               "subpopulations; defense thresholds are fixed or read off the clean validation split, never the "
               "test set")


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


@dataclass
class MatrixOutcome:
    """What a matrix run produced: its run folder, the table rows and which cells ran."""

    run_id: str
    path: Path
    rows: list[dict[str, Any]]
    table: list[dict[str, str]]
    metrics: dict[str, Any]
    computed: list[str]
    reused: list[str]
    notes: list[str] = field(default_factory=lambda: [STD_NOTE])


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
            raise PoisonlabError(f"unknown grid key '{key}'{did_you_mean(str(key), list(GRID_KEYS))}; "
                                 f"allowed: {', '.join(GRID_KEYS)}")
    kind = _check_kind(raw.get("kind", "badnets"))
    name = raw.get("name", "matrix")
    if not isinstance(name, str) or not name.strip():
        raise PoisonlabError(f"grid key 'name' must be a non-empty string, got {name!r}")
    n_workers = _check_workers(workers if workers is not None else raw.get("workers"), kind)
    base = _check_base(raw.get("base"), kind)
    attacks = _check_attacks(raw.get("attacks"), kind)
    defenses_raw, defense_names = _check_defenses(raw.get("defenses"), kind)
    seeds = _check_seeds(raw.get("seeds"))
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
                raise PoisonlabError(f"attacks '{seen[chash]}' and '{label}' are the same experiment; list it once")
            seen[chash] = label
            cells.append(Cell(label, seed, cfg, chash))
    return Grid(name, attacks, defense_names, seeds, output, cells, copy.deepcopy(raw), kind, n_workers)


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in GRID_KINDS:
        raise PoisonlabError(f"unknown grid kind {kind!r}{did_you_mean(str(kind), list(GRID_KINDS))}; "
                             f"choose badnets (the default) or subpop")
    return kind


def _check_workers(workers: Any, kind: str) -> int | None:
    if workers is None:
        return None
    if kind != "subpop":
        raise PoisonlabError("workers (grid key or --workers) sets the parallel retrainings of subpop cells; "
                             "remove it from this badnets grid, or set kind: subpop")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PoisonlabError(f"workers must be an integer >= 1 (or left out: one per core), got {workers!r}")
    return workers


def _check_base(base: Any, kind: str = "badnets") -> dict[str, Any]:
    if base is None:
        base = {}
    what = "a subpop config mapping (data:, model:)" if kind == "subpop" else \
        "an experiment config mapping (data:, model:, train:, ...)"
    if not isinstance(base, dict):
        raise PoisonlabError(f"grid key 'base' must be {what}, got {base!r}")
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
            raise PoisonlabError(f"attack labels must be non-empty strings, got {label!r}")
        if not isinstance(section, dict):
            raise PoisonlabError(f"attacks.{label} must be an attack section mapping (e.g. {example}), "
                                 f"got {section!r}")
        if kind == "subpop":
            _check_subpop_attack(label, section)
        else:
            try:
                build_attack(section)
            except PoisonlabError as exc:
                raise PoisonlabError(f"attacks.{label}: {exc}") from None
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
        raise PoisonlabError(f"unknown key 'attacks.{label}.{key}'{did_you_mean(str(key), list(SUBPOP_ATTACK_KEYS))}; "
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
        raise PoisonlabError(f"grid key 'defenses' must be a list of defense sections, got {raw!r}")
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
        raise PoisonlabError(f"grid key 'seeds' must be a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise PoisonlabError(f"seeds must be integers >= 0, got {s!r}")
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
    except PoisonlabError as exc:
        raise PoisonlabError(f"base: {exc}") from None
    return cfg


def _badnets_done(metrics: dict[str, Any], defenses: list[str]) -> bool:
    done = metrics.get("defenses") or {}
    return "badnet" in metrics and "time" in metrics and isinstance(done, dict) and all(d in done for d in defenses)


def _subpop_done(metrics: dict[str, Any], defenses: list[str]) -> bool:
    if not all(k in metrics for k in ("summary", "time", "model")):
        return False
    if not defenses:  # the undefended numbers come from the per-subpopulation rows (metrics.json only)
        return "rows" in metrics
    done = metrics.get("defenses") or []
    return isinstance(done, list) and set(defenses) <= {s.get("defense") for s in done}


def find_finished(root: str | Path, chash: str, defenses: list[str],
                  kind: str = "badnets") -> tuple[str, dict[str, Any]] | None:
    """The newest finished run in store ``root`` with config hash ``chash`` holding every defense; else None.

    A run counts when its index row names a folder that still exists and its metrics (the
    index row's, else ``metrics.json``) hold the attacked model (``badnet``; for ``kind``
    ``subpop``: ``summary`` and ``model``) and each defense's result (``defenses``).
    """
    done = _subpop_done if kind == "subpop" else _badnets_done
    root_path = Path(root)
    for row in list_runs(root_path):
        if row.get("config_hash") != chash or row.get("attack") == "matrix":
            continue
        folder = Path(row["path"])
        if not (folder / "metrics.json").is_file():
            folder = root_path / row["id"]
            if not (folder / "metrics.json").is_file():
                continue
        metrics = row.get("metrics") or {}
        if not done(metrics, defenses):
            try:
                metrics = read_metrics(folder)
            except PoisonlabError:
                continue
        if done(metrics, defenses):
            return row["id"], metrics
    return None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _stats(values: dict[str, list[float | None]]) -> dict[str, float | None]:
    """``{name}_mean`` and ``{name}_std`` over the seeds for each measure (None entries: not applicable, left out)."""
    out: dict[str, float | None] = {}
    for name, vals in values.items():
        kept = [float(v) for v in vals if v is not None]
        mean, std = mean_std(kept) if kept else (None, None)
        out[f"{name}_mean"], out[f"{name}_std"] = mean, std
    return out


def cell_summary(metrics: dict[str, Any], defenses: list[str]) -> dict[str, dict[str, Any]]:
    """Per defense (``none`` first): clean accuracy, attack success and defense seconds of one BadNets cell."""
    bad = metrics["badnet"]
    out = {"none": {"clean_accuracy": bad["clean_accuracy"], "attack_success_rate": bad.get("attack_success_rate"),
                    "defense_seconds": 0.0}}
    for d in defenses:
        m = metrics["defenses"][d]
        out[d] = {"clean_accuracy": m["clean_accuracy"], "attack_success_rate": m.get("attack_success_rate"),
                  "defense_seconds": m.get("defense_seconds", 0.0)}
    return out


def subpop_cell_summary(metrics: dict[str, Any], defenses: list[str]) -> list[dict[str, Any]]:
    """One entry per (defense, alpha), ``none`` first, of one subpop cell: its ``metrics["defenses"]``
    table (Jagielski et al., CCS 2021, Sec. 6; :func:`~poisonlab.subpop.defended.defense_summary`), or
    that table computed from its rows when the grid has no defense. Rows removed are None for ``none``."""
    table = metrics.get("defenses") or defense_summary(metrics["rows"], [])
    out = []
    for s in table:
        if s["defense"] != "none" and s["defense"] not in defenses:
            continue
        undefended = s["defense"] == "none"
        out.append({"defense": s["defense"], "alpha": s["alpha"], "k": s["k"],
                    "worst_subpops": list(s.get("worst_subpops", [])),
                    **{m: None if undefended and m in ("poisons_removed", "clean_removed") else s[m]
                       for m in SUBPOP_MEASURES}})
    return out


def matrix_rows(cells: list[dict[str, Any]], attacks: list[str], defenses: list[str]) -> list[dict[str, Any]]:
    """Numeric rows of a BadNets grid, one per (attack, defense incl. ``none``), aggregated over the cells' seeds.

    ``cells`` are dicts with ``attack``, ``summary`` (from :func:`cell_summary`) and ``total_seconds``.
    """
    rows = []
    for attack in attacks:
        mine = [c for c in cells if c["attack"] == attack]
        for d in ["none", *defenses]:
            got = [c["summary"][d] for c in mine]
            rows.append({"attack": attack, "defense": d, "n_seeds": len(mine),
                         **_stats({"clean_accuracy": [g["clean_accuracy"] for g in got],
                                   "attack_success": [g["attack_success_rate"] for g in got]}),
                         "defense_seconds_mean": mean_std([g["defense_seconds"] for g in got])[0],
                         "total_seconds_mean": mean_std([c["total_seconds"] for c in mine])[0]})
    return rows


def subpop_matrix_rows(cells: list[dict[str, Any]], alphas: dict[str, list[float]],
                       defenses: list[str]) -> list[dict[str, Any]]:
    """Numeric rows of a subpop grid, one per (attack, alpha, defense incl. ``none``), aggregated over seeds.

    ``cells`` are dicts with ``attack``, ``run_id``, ``summary`` (from :func:`subpop_cell_summary`)
    and ``total_seconds``; ``alphas`` maps each attack label to its alphas.
    """
    rows = []
    for attack, attack_alphas in alphas.items():
        mine = [c for c in cells if c["attack"] == attack]
        for alpha in attack_alphas:
            for d in ["none", *defenses]:
                got = [_entry(c, d, alpha) for c in mine]
                rows.append({"attack": attack, "alpha": alpha, "defense": d, "n_seeds": len(mine),
                             "k": max(g["k"] for g in got),
                             **_stats({m: [g[m] for g in got] for m in SUBPOP_MEASURES}),
                             "total_seconds_mean": mean_std([c["total_seconds"] for c in mine])[0]})
    return rows


def _entry(cell: dict[str, Any], defense: str, alpha: float) -> dict[str, Any]:
    for s in cell["summary"]:
        if s["defense"] == defense and s["alpha"] == alpha:
            return s
    raise PoisonlabError(f"run {cell['run_id']} has no result for defense {defense!r} at alpha {alpha:g}; "
                         f"delete it from the store and run the grid again")


def _pm(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{scale * mean:.{digits}f} ± " + ("–" if std is None else f"{scale * std:.{digits}f}")


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The printed table of a BadNets grid: percentages as ``mean ± std`` (std in percentage points)."""
    return [{"attack": r["attack"], "defense": r["defense"],
             "clean acc. % (mean ± std)": _pm(r["clean_accuracy_mean"], r["clean_accuracy_std"]),
             "attack success % (mean ± std)": _pm(r["attack_success_mean"], r["attack_success_std"]),
             "defense s": "–" if r["defense"] == "none" else f"{r['defense_seconds_mean']:.1f}",
             "run s": f"{r['total_seconds_mean']:.1f}", "seeds": str(r["n_seeds"])} for r in rows]


def subpop_display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The printed table of a subpop grid, every number ``mean ± std`` over seeds: target damage as
    a fraction (as in the subpop tables), the rest in percent; ``–`` where not applicable."""
    ks = sorted({r["k"] for r in rows})
    target = f"target damage, worst {ks[0] if len(ks) == 1 else 'k'}"
    return [{"attack": r["attack"], "alpha": f"{r['alpha']:g}", "defense": r["defense"],
             target: _pm(r["target_worst_k_mean"], r["target_worst_k_std"], scale=1.0, digits=3),
             "collateral %": _pm(r["collateral_all_mean"], r["collateral_all_std"]),
             "clean acc. %": _pm(r["clean_accuracy_mean"], r["clean_accuracy_std"]),
             "poisons removed %": _pm(r["poisons_removed_mean"], r["poisons_removed_std"]),
             "clean rows removed %": _pm(r["clean_removed_mean"], r["clean_removed_std"]),
             "run s": f"{r['total_seconds_mean']:.1f}", "seeds": str(r["n_seeds"])} for r in rows]


def print_matrix(table: list[dict[str, str]], title: str | None = None) -> None:
    """Print the matrix table on the terminal, one section per attack (and alpha)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    if not table:
        return
    out = Table(title=title)
    for h in table[0]:
        out.add_column(h, justify="left" if h in ("attack", "alpha", "defense") else "right")

    def group(r: dict[str, str]) -> tuple[str | None, str | None]:
        return r["attack"], r.get("alpha")

    for i, r in enumerate(table):
        last = i + 1 == len(table) or group(table[i + 1]) != group(r)
        out.add_row(*r.values(), end_section=last)
    (Console() if sys.stdout.isatty() else Console(width=200)).print(out)


def _run_cell(cell: Cell) -> tuple[str, dict[str, Any]]:
    """Compute one cell: its run id and metrics."""
    if isinstance(cell.config, SubpopConfig):
        folder, metrics = run_subpop_experiment(cell.config)
        return folder.run_id, metrics
    outcome = run_experiment(cell.config)
    return outcome.run_id, outcome.metrics


def _cell_record(grid: Grid, cell: Cell, run_id: str, metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What the matrix keeps of one cell (its numbers per defense, not the per-subpopulation rows)."""
    record: dict[str, Any] = {"attack": cell.attack, "seed": cell.seed, "run_id": run_id, "config_hash": cell.hash,
                              "reused": reused}
    if grid.kind == "subpop":
        record.update(summary=subpop_cell_summary(metrics, grid.defenses),
                      clean_model_accuracy=metrics["model"]["clean_accuracy"],
                      subpopulations=metrics.get("subpopulations", {}).get("count"), workers=metrics.get("workers"))
    else:
        record.update(summary=cell_summary(metrics, grid.defenses),
                      baseline_clean_accuracy=metrics["baseline"]["clean_accuracy"])
    record["total_seconds"] = metrics["time"]["total_seconds"]
    return record


def run_matrix(grid: Grid, echo: Callable[[str], None] | None = None) -> MatrixOutcome:
    """Run (or reuse) every cell of ``grid``, then write the matrix run folder and index row.

    ``echo`` receives one line per cell (computed or reused).
    """
    say = echo or (lambda _line: None)
    start = time.perf_counter()
    root = grid.output.dir
    cells: list[dict[str, Any]] = []
    computed: list[str] = []
    reused: list[str] = []
    for i, cell in enumerate(grid.cells, 1):
        where = f"cell {i}/{len(grid.cells)} ({cell.attack}, seed {cell.seed})"
        found = find_finished(root, cell.hash, grid.defenses, grid.kind)
        if found is not None:
            run_id, metrics = found
            reused.append(run_id)
            say(f"{where}: reused {run_id}")
        else:
            run_id, metrics = _run_cell(cell)
            computed.append(run_id)
            say(f"{where}: computed {run_id} in {metrics['time']['total_seconds']:.1f}s")
            if metrics.get("config_hash", cell.hash) != cell.hash:
                say(f"{where}: warning: the run recorded config hash {metrics['config_hash']}, the matrix expected "
                    f"{cell.hash}, so this cell will not be reused next time (a bug: please report it)")
        cells.append(_cell_record(grid, cell, run_id, metrics, found is not None))
    notes = [STD_NOTE]
    if grid.kind == "subpop":
        alphas = {label: next(list(c.config.attack.alphas) for c in grid.cells
                              if c.attack == label and isinstance(c.config, SubpopConfig)) for label in grid.attacks}
        rows = subpop_matrix_rows(cells, alphas, grid.defenses)
        table = subpop_display_rows(rows)
        notes.append(SUBPOP_NOTE)
        selection = ("defense thresholds are fixed parameters or decided on the clean validation split; "
                     "no test row is read to choose them")
    else:
        rows = matrix_rows(cells, list(grid.attacks), grid.defenses)
        table = display_rows(rows)
        selection = "defense hyperparameters and thresholds are decided on the clean validation split only"
    ghash = config_hash({"matrix": sorted(c.hash for c in grid.cells)})
    title = f"{grid.name}: attack x defense over {len(grid.seeds)} seed(s)"
    with open_run(root, grid.name, ghash) as folder:
        metrics_out: dict[str, Any] = {
            "name": grid.name, "version": __version__, "kind": "matrix", "grid_kind": grid.kind,
            "config_hash": ghash, "platform": platform.platform(), "grid": grid.raw, "attacks": list(grid.attacks),
            "defenses": ["none", *grid.defenses], "seeds": grid.seeds, "std": STD_NOTE, "notes": notes,
            "selection": selection, "cells": cells, "rows": rows, "computed": computed, "reused": reused,
            "time": {"total_seconds": time.perf_counter() - start},
            "peak_memory_mb": {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()},
        }
        if grid.kind == "subpop":
            metrics_out["workers"] = grid.workers
        md = report.to_markdown(table, title) + "".join(f"\n{n}" for n in notes) + "\n"
        folder.write_text("tables/matrix.md", md)
        folder.write_text("tables/matrix.csv", report.to_csv(rows))
        folder.write_json("metrics.json", metrics_out)
    index_run(root, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": grid.name,
        "dataset": grid.cells[0].config.data.name, "model": grid.cells[0].config.model.name, "attack": "matrix",
        "config_hash": ghash, "seed": None, "version": __version__, "path": str(folder.path.resolve()),
        "summary": {"cells": len(cells), "computed": len(computed), "reused": len(reused),
                    "seconds": metrics_out["time"]["total_seconds"]},
        "metrics": {k: v for k, v in metrics_out.items() if k != "grid"},
    })
    return MatrixOutcome(folder.run_id, folder.path, rows, table, metrics_out, computed, reused, notes)
