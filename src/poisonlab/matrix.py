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

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, report
from .config import config_hash
from .errors import PoisonlabError
from .experiment import run_experiment
from .matrix_grid import Cell, Grid, grid_from_dict, load_grid  # noqa: F401 (re-exported)
from .matrix_reuse import (  # noqa: F401 (find_finished, cell_summary: re-exported)
    SUBPOP_MEASURES,
    _provenance_of,
    cell_summary,
    find_finished,
    subpop_cell_summary,
)
from .resources import peak_cuda_mb, peak_rss_mb
from .store import (
    open_run,
    prepare_root,
    record_run,
)
from .subpop.config import SubpopConfig
from .subpop.experiment import run_subpop_experiment

STD_NOTE = "std: sample standard deviation over seeds (ddof=1); – for a single seed"
SUBPOP_NOTE = ("every number: mean ± std over seeds; target damage: mean over the k subpopulations worst "
               "without defense (the same ones for every defense), accuracy lost against the clean model A(D) "
               "(Jagielski et al., CCS 2021); collateral, clean accuracy and rows removed: means over all attacked "
               "subpopulations; defense thresholds are fixed or read off the clean validation split, never the "
               "test set")


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
                      subpopulations=_count(metrics.get("subpopulations")), workers=metrics.get("workers"))
    else:
        record.update(summary=cell_summary(metrics, grid.defenses),
                      baseline_clean_accuracy=metrics["baseline"]["clean_accuracy"])
    record["total_seconds"] = metrics["time"]["total_seconds"]
    return record


def _count(subpopulations: Any) -> int | None:
    count = subpopulations.get("count") if isinstance(subpopulations, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def run_matrix(grid: Grid, echo: Callable[[str], None] | None = None) -> MatrixOutcome:
    """Run (or reuse) every cell of ``grid``, then write the matrix run folder and index row.

    ``echo`` receives one line per cell (computed or reused).
    """
    say = echo or (lambda _line: None)
    start = time.perf_counter()
    root = grid.output.dir
    prepare_root(root)  # a file, unwritable or damaged store fails before any cell runs
    cells: list[dict[str, Any]] = []
    computed: list[str] = []
    reused: list[str] = []
    loaded: dict[tuple[Any, ...], dict[str, str]] = {}
    for i, cell in enumerate(grid.cells, 1):
        where = f"cell {i}/{len(grid.cells)} ({cell.attack}, seed {cell.seed})"
        alphas = list(cell.config.attack.alphas) if isinstance(cell.config, SubpopConfig) else None
        found = find_finished(root, cell.hash, grid.defenses, grid.kind, alphas, _provenance_of(cell, loaded))
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
    record_run(root, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": grid.name,
        "dataset": grid.cells[0].config.data.name, "model": grid.cells[0].config.model.name, "attack": "matrix",
        "config_hash": ghash, "seed": None, "version": __version__, "path": str(folder.path.resolve()),
        "summary": {"cells": len(cells), "computed": len(computed), "reused": len(reused),
                    "seconds": metrics_out["time"]["total_seconds"]},
        "metrics": {k: v for k, v in metrics_out.items() if k != "grid"},
    })
    return MatrixOutcome(folder.run_id, folder.path, rows, table, metrics_out, computed, reused, notes)
