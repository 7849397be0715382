"""The matrix: a grid of attacks x defenses x seeds, run as one command, summarised in one table.

A grid file (``poisonlab matrix GRID.yaml``) holds::

    name: digits-matrix
    base: {data: ..., model: ..., train: ...}     # an experiment config without attack/defenses/seed
    attacks: {badnets-pattern: {name: badnets, p: 0.1}, ...}   # label -> attack section
    defenses: [{name: fine-pruning, step: 4}, ...]            # "none" is always included
    seeds: [0, 1]
    output: {dir: runs}                            # applied to every cell

A *cell* is one (attack, seed) pair: one :func:`~poisonlab.experiment.run_experiment` whose
``defenses:`` list holds every defense of the grid, since the defenses of one attacked model
share its training. A cell whose experiment hash already has a finished run in the store is
reused, never recomputed, so an interrupted or extended grid only runs what is missing.

Every defense makes its decisions (pruning stop, fine-tuning, filtering thresholds) on the
clean validation split only (see :mod:`poisonlab.defend`); the matrix never looks at test
results to choose anything, it only averages them. The table's spread is the sample standard
deviation over seeds (``ddof=1``), shown as ``–`` for a single seed.
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

GRID_KEYS = ("name", "base", "attacks", "defenses", "seeds", "output")
_NOT_IN_BASE = {
    "attack": "list attacks under the grid's attacks: mapping",
    "defenses": "list defenses under the grid's defenses: list",
    "seed": "list seeds under the grid's seeds: list",
    "name": "name the grid with its top-level name:",
    "output": "set output under the grid's top-level output:",
}
STD_NOTE = "std: sample standard deviation over seeds (ddof=1); – for a single seed"


@dataclass
class Cell:
    """One (attack, seed) experiment of the grid with its validated config and experiment hash."""

    attack: str
    seed: int
    config: ExperimentConfig
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


def load_grid(path: str | Path, data_dir: str | Path | None = None, output_dir: str | Path | None = None) -> Grid:
    """Read and validate a grid YAML file (every cell's config is checked; nothing runs)."""
    return grid_from_dict(read_yaml(path), data_dir=data_dir, output_dir=output_dir)


def grid_from_dict(raw: dict[str, Any], data_dir: str | Path | None = None,
                   output_dir: str | Path | None = None) -> Grid:
    """Validate a grid mapping and build every cell's :class:`ExperimentConfig`; one-line errors."""
    if not isinstance(raw, dict):
        raise PoisonlabError(f"a grid must be a mapping of {', '.join(GRID_KEYS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in GRID_KEYS:
            raise PoisonlabError(f"unknown grid key '{key}'{did_you_mean(str(key), list(GRID_KEYS))}; "
                                 f"allowed: {', '.join(GRID_KEYS)}")
    name = raw.get("name", "matrix")
    if not isinstance(name, str) or not name.strip():
        raise PoisonlabError(f"grid key 'name' must be a non-empty string, got {name!r}")
    base = _check_base(raw.get("base"))
    attacks = _check_attacks(raw.get("attacks"))
    defenses_raw = raw.get("defenses")
    if defenses_raw is None:
        defenses_raw = []
    if not isinstance(defenses_raw, list):
        raise PoisonlabError(f"grid key 'defenses' must be a list of defense sections, got {defenses_raw!r}")
    defense_names = [n for n, _ in check_defenses(defenses_raw)]
    if "none" in defense_names:
        raise PoisonlabError("the defense label 'none' is reserved for the undefended model (always included)")
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
            cfg = _cell_config(name, base, label, section, defenses_raw, seed, output)
            chash = experiment_hash(cfg.to_dict())
            if chash in seen and seen[chash] != label:
                raise PoisonlabError(f"attacks '{seen[chash]}' and '{label}' are the same experiment; list it once")
            seen[chash] = label
            cells.append(Cell(label, seed, cfg, chash))
    return Grid(name, attacks, defense_names, seeds, output, cells, copy.deepcopy(raw))


def _check_base(base: Any) -> dict[str, Any]:
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise PoisonlabError(f"grid key 'base' must be an experiment config mapping (data:, model:, train:, ...), "
                             f"got {base!r}")
    for key, why in _NOT_IN_BASE.items():
        if key in base:
            raise PoisonlabError(f"base must not hold '{key}': {why}")
    return copy.deepcopy(base)


def _check_attacks(attacks: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(attacks, dict) or not attacks:
        raise PoisonlabError("grid key 'attacks' must be a non-empty mapping of label -> attack section "
                             "(e.g. badnets-pattern: {name: badnets, p: 0.1})")
    out = {}
    for label, section in attacks.items():
        if not isinstance(label, str) or not label.strip():
            raise PoisonlabError(f"attack labels must be non-empty strings, got {label!r}")
        if not isinstance(section, dict):
            raise PoisonlabError(f"attacks.{label} must be an attack section mapping (name: badnets, ...), "
                                 f"got {section!r}")
        try:
            build_attack(section)
        except PoisonlabError as exc:
            raise PoisonlabError(f"attacks.{label}: {exc}") from None
        out[label] = copy.deepcopy(section)
    return out


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
    try:
        cfg = from_dict(ExperimentConfig, raw)
        cfg.validate()
        DATASETS.get(cfg.data.name)
        MODELS.get(cfg.model.name)
    except PoisonlabError as exc:
        raise PoisonlabError(f"base: {exc}") from None
    if defenses and cfg.data.val_fraction <= 0:
        raise PoisonlabError("base: defenses decide on a clean validation split; set data.val_fraction > 0")
    return cfg


def find_finished(root: str | Path, chash: str, defenses: list[str]) -> tuple[str, dict[str, Any]] | None:
    """The newest finished run in store ``root`` with experiment hash ``chash`` holding every defense; else None.

    A run counts when its index row names a folder that still exists and its metrics hold
    the attacked model (``badnet``) and each defense's result (``defenses``).
    """
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
        if "badnet" not in metrics:
            try:
                metrics = read_metrics(folder)
            except PoisonlabError:
                continue
        done = metrics.get("defenses") or {}
        if "badnet" in metrics and "time" in metrics and all(d in done for d in defenses):
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


def cell_summary(metrics: dict[str, Any], defenses: list[str]) -> dict[str, dict[str, Any]]:
    """Per defense (``none`` first): clean accuracy, attack success and defense seconds of one cell."""
    bad = metrics["badnet"]
    out = {"none": {"clean_accuracy": bad["clean_accuracy"], "attack_success_rate": bad.get("attack_success_rate"),
                    "defense_seconds": 0.0}}
    for d in defenses:
        m = metrics["defenses"][d]
        out[d] = {"clean_accuracy": m["clean_accuracy"], "attack_success_rate": m.get("attack_success_rate"),
                  "defense_seconds": m.get("defense_seconds", 0.0)}
    return out


def matrix_rows(cells: list[dict[str, Any]], attacks: list[str], defenses: list[str]) -> list[dict[str, Any]]:
    """Numeric rows, one per (attack, defense incl. ``none``), aggregated over the cells' seeds.

    ``cells`` are dicts with ``attack``, ``summary`` (from :func:`cell_summary`) and ``total_seconds``.
    """
    rows = []
    for attack in attacks:
        mine = [c for c in cells if c["attack"] == attack]
        for d in ["none", *defenses]:
            acc = [c["summary"][d]["clean_accuracy"] for c in mine]
            asr = [c["summary"][d]["attack_success_rate"] for c in mine
                   if c["summary"][d]["attack_success_rate"] is not None]
            acc_m, acc_s = mean_std(acc)
            asr_m, asr_s = mean_std(asr) if asr else (None, None)
            rows.append({"attack": attack, "defense": d, "n_seeds": len(mine),
                         "clean_accuracy_mean": acc_m, "clean_accuracy_std": acc_s,
                         "attack_success_mean": asr_m, "attack_success_std": asr_s,
                         "defense_seconds_mean": mean_std([c["summary"][d]["defense_seconds"] for c in mine])[0],
                         "total_seconds_mean": mean_std([c["total_seconds"] for c in mine])[0]})
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f} ± " + ("–" if std is None else f"{100 * std:.2f}")


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The printed table: percentages as ``mean ± std`` (std in percentage points)."""
    return [{"attack": r["attack"], "defense": r["defense"],
             "clean acc. % (mean ± std)": _pm(r["clean_accuracy_mean"], r["clean_accuracy_std"]),
             "attack success % (mean ± std)": _pm(r["attack_success_mean"], r["attack_success_std"]),
             "defense s": "–" if r["defense"] == "none" else f"{r['defense_seconds_mean']:.1f}",
             "run s": f"{r['total_seconds_mean']:.1f}", "seeds": str(r["n_seeds"])} for r in rows]


def print_matrix(table: list[dict[str, str]], title: str | None = None) -> None:
    """Print the matrix table on the terminal, one section per attack."""
    import sys

    from rich.console import Console
    from rich.table import Table

    if not table:
        return
    out = Table(title=title)
    for i, h in enumerate(table[0]):
        out.add_column(h, justify="left" if i < 2 else "right")
    for i, r in enumerate(table):
        last = i + 1 == len(table) or table[i + 1]["attack"] != r["attack"]
        out.add_row(*r.values(), end_section=last)
    (Console() if sys.stdout.isatty() else Console(width=200)).print(out)


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
        found = find_finished(root, cell.hash, grid.defenses)
        if found is not None:
            run_id, metrics = found
            reused.append(run_id)
            say(f"{where}: reused {run_id}")
        else:
            outcome = run_experiment(cell.config)
            run_id, metrics = outcome.run_id, outcome.metrics
            computed.append(run_id)
            say(f"{where}: computed {run_id} in {metrics['time']['total_seconds']:.1f}s")
        cells.append({"attack": cell.attack, "seed": cell.seed, "run_id": run_id, "config_hash": cell.hash,
                      "reused": found is not None, "summary": cell_summary(metrics, grid.defenses),
                      "baseline_clean_accuracy": metrics["baseline"]["clean_accuracy"],
                      "total_seconds": metrics["time"]["total_seconds"]})
    rows = matrix_rows(cells, list(grid.attacks), grid.defenses)
    table = display_rows(rows)
    ghash = config_hash({"matrix": sorted(c.hash for c in grid.cells)})
    title = f"{grid.name}: attack x defense over {len(grid.seeds)} seed(s)"
    with open_run(root, grid.name, ghash) as folder:
        metrics_out: dict[str, Any] = {
            "name": grid.name, "version": __version__, "kind": "matrix", "config_hash": ghash,
            "platform": platform.platform(), "grid": grid.raw, "attacks": list(grid.attacks),
            "defenses": ["none", *grid.defenses], "seeds": grid.seeds, "std": STD_NOTE,
            "selection": "defense hyperparameters and thresholds are decided on the clean validation split only",
            "cells": cells, "rows": rows, "computed": computed, "reused": reused,
            "time": {"total_seconds": time.perf_counter() - start},
            "peak_memory_mb": {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()},
        }
        folder.write_text("tables/matrix.md", report.to_markdown(table, title) + f"\n{STD_NOTE}\n")
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
    return MatrixOutcome(folder.run_id, folder.path, rows, table, metrics_out, computed, reused)
