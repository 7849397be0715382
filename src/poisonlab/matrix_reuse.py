"""Which grid cells are finished: a run in the store that a cell may reuse instead of running.

A run is reused when its index row and ``metrics.json`` are intact, it has the cell's config
hash, its family says every number the grid reads is there and of the right type, and it
recorded the same provenance (digests of the data loaded and of poisonlab's code) as the
current one; a damaged or foreign run is skipped, so the cell is computed again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import PoisonlabError
from .matrix_grid import Cell
from .provenance import provenance
from .store import read_metrics, run_folder, runs_with_hash


def find_finished(root: str | Path, chash: str, done: Callable[[dict[str, Any]], bool],
                  current: Callable[[], dict[str, str]] | None = None) -> tuple[str, dict[str, Any]] | None:
    """The newest finished run in store ``root`` with config hash ``chash`` whose metrics pass
    ``done`` (the family's check that every number the grid reads is there); else None.

    With ``current`` (a function giving this code's and data's :func:`~poisonlab.provenance.provenance`,
    called only when a candidate is found), a run counts only when it recorded that same
    provenance: a result computed from other data (the config hash leaves out ``data.dir``)
    or other code is never served. A damaged cell is not served: it is skipped, so the grid
    computes it again.
    """
    for row in runs_with_hash(root, chash):
        if row.get("attack") == "matrix":
            continue
        try:
            metrics = read_metrics(run_folder(root, row["id"]))
        except PoisonlabError:
            continue
        if metrics.get("config_hash", chash) != chash or not done(metrics):
            continue
        if current is not None and metrics.get("provenance") != current():
            continue
        return row["id"], metrics
    return None


def provenance_of(cell: Cell, memo: dict[tuple[Any, ...], dict[str, str]]) -> Callable[[], dict[str, str]]:
    """A lazy :func:`provenance` of the data ``cell`` would load (loaded once per data section)."""
    from . import data as data_pkg

    data = cell.config.data

    def current() -> dict[str, str]:
        key = tuple(sorted((k, repr(v)) for k, v in vars(data).items()))
        if key not in memo:
            memo[key] = provenance(data_pkg.load_data(data))
        return memo[key]

    return current
