"""The matrix: a grid of attacks x defenses x seeds, run as one command, summarised in one table.

A grid file (``poisonlab matrix GRID.yaml``; :mod:`poisonlab.matrix_grid`) names its attack
family with ``kind:`` (default ``backdoor``)::

    name: digits-matrix
    kind: backdoor                                 # or subpopulation (older names: badnets, subpop)
    base: {data: ..., model: ..., train: ...}     # an experiment config without attack/defenses/seed
    attacks: {badnets-pattern: {name: badnets, p: 0.1}, ...}   # label -> attack section
    defenses: [{name: fine-pruning, step: 4}, ...]            # "none" is always included
    seeds: [0, 1]
    output: {dir: runs}                            # applied to every cell

For a subpopulation grid an attack entry sets ``subpopulations:`` and ``attack:`` (alphas,
label) and ``workers:`` sets the parallel retrainings in each cell (see
:mod:`poisonlab.families.subpopulation`).

A *cell* is one (attack, seed) experiment: a pure function of its config, keyed in the run
store by the hash of that config (which also seeds it). A cell whose hash already has a
finished run in the store, computed from the same data and code, is reused, never
recomputed, so an interrupted or extended grid only runs what is missing. Cells run through
an *executor* (:mod:`poisonlab.executors`: in-process or a local process pool). The matrix
never looks at test results to choose anything, it only averages them; what it averages and
how it prints it is the family's (:mod:`poisonlab.families`). The table's spread is the sample
standard deviation over seeds (``ddof=1``), shown as ``–`` for a single seed.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, report
from .config import config_hash
from .executors import Executor, InProcess
from .families.grid_stats import mean_std  # noqa: F401 (re-exported)
from .matrix_grid import Cell, Grid, grid_from_dict, load_grid  # noqa: F401 (re-exported)
from .matrix_reuse import find_finished, provenance_of
from .resources import peak_cuda_mb, peak_rss_mb
from .store import open_run, prepare_root, record_run

STD_NOTE = "std: sample standard deviation over seeds (ddof=1); – for a single seed"


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


def run_cell(cell: Cell) -> tuple[str, dict[str, Any]]:
    """Compute one cell (a pure function of its config): its run id and metrics."""
    from .families import run_config

    outcome = run_config(cell.config)
    return outcome.run_id, outcome.metrics


def _record(grid: Grid, cell: Cell, run_id: str, metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What the matrix keeps of one cell (its numbers per defense, not the per-row details)."""
    return {"attack": cell.attack, "seed": cell.seed, "run_id": run_id, "config_hash": cell.hash, "reused": reused,
            **grid.family.cell_record(metrics, grid.defenses), "total_seconds": metrics["time"]["total_seconds"]}


def _finished(grid: Grid, cell: Cell, loaded: dict[tuple[Any, ...], dict[str, str]]) -> tuple[str, dict] | None:
    return find_finished(grid.output.dir, cell.hash,
                         lambda m: grid.family.cell_done(m, grid.defenses, cell.config), provenance_of(cell, loaded))


def run_matrix(grid: Grid, echo: Callable[[str], None] | None = None,
               executor: Executor | None = None) -> MatrixOutcome:
    """Run (or reuse) every cell of ``grid``, then write the matrix run folder and index row.

    ``echo`` receives one line per cell (computed, with its time, or reused); ``executor``
    (default: :class:`~poisonlab.executors.InProcess`) runs the cells that are not finished.
    """
    say = echo or (lambda _line: None)
    start = time.perf_counter()
    root = grid.output.dir
    prepare_root(root)  # a file, unwritable or damaged store fails before any cell runs
    loaded: dict[tuple[Any, ...], dict[str, str]] = {}
    records: dict[int, dict[str, Any]] = {}
    computed: list[str] = []
    reused: list[str] = []
    todo: list[tuple[int, Cell]] = []
    where = {i: f"cell {i + 1}/{len(grid.cells)} ({c.attack}, seed {c.seed})" for i, c in enumerate(grid.cells)}
    for i, cell in enumerate(grid.cells):
        found = _finished(grid, cell, loaded)
        if found is None:
            todo.append((i, cell))
            continue
        reused.append(found[0])
        records[i] = _record(grid, cell, *found, reused=True)
        say(f"{where[i]}: reused {found[0]}")
    for i, (run_id, metrics) in (executor or InProcess()).run(run_cell, todo):
        cell = grid.cells[i]
        computed.append(run_id)
        say(f"{where[i]}: computed {run_id} in {metrics['time']['total_seconds']:.1f}s")
        if metrics.get("config_hash", cell.hash) != cell.hash:
            say(f"{where[i]}: warning: the run recorded config hash {metrics['config_hash']}, the matrix expected "
                f"{cell.hash}, so this cell will not be reused next time (a bug: please report it)")
        records[i] = _record(grid, cell, run_id, metrics, reused=False)
    cells = [records[i] for i in range(len(grid.cells))]
    return _write(grid, cells, computed, reused, start)


def _write(grid: Grid, cells: list[dict[str, Any]], computed: list[str], reused: list[str],
           start: float) -> MatrixOutcome:
    """The matrix run folder (table, CSV, metrics) and its index row."""
    family, root = grid.family, grid.output.dir
    rows = family.grid_rows(cells, grid)
    table = family.display_rows(rows)
    notes = [STD_NOTE, *family.notes]
    ghash = config_hash({"matrix": sorted(c.hash for c in grid.cells)})
    title = f"{grid.name}: attack x defense over {len(grid.seeds)} seed(s)"
    with open_run(root, grid.name, ghash) as folder:
        metrics_out: dict[str, Any] = {
            "name": grid.name, "version": __version__, "kind": "matrix", "grid_kind": family.name,
            "config_hash": ghash, "platform": platform.platform(), "grid": grid.raw, "attacks": list(grid.attacks),
            "defenses": ["none", *grid.defenses], "seeds": grid.seeds, "std": STD_NOTE, "notes": notes,
            "selection": family.selection, "cells": cells, "rows": rows, "computed": computed, "reused": reused,
            "time": {"total_seconds": time.perf_counter() - start},
            "peak_memory_mb": {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()},
        }
        if grid.workers is not None:
            metrics_out["workers"] = grid.workers
        md = report.to_markdown(table, title) + "".join(f"\n{n}" for n in notes) + "\n"
        folder.write_text("tables/matrix.md", md)
        folder.write_text("tables/matrix.csv", report.to_csv(rows))
        if hasattr(family, "grid_outputs"):  # a family's own grid tables and plots (availability: error curves)
            family.grid_outputs(folder, cells, grid)
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
