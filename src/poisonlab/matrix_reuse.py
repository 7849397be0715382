"""Which grid cells are finished: a run in the store that a cell may reuse instead of running.

A run is reused when its index row and ``metrics.json`` are intact, it has the cell's config
hash, every number the matrix reads is of the right type, and it recorded the same
provenance (digests of the data loaded and of poisonlab's code) as the current one; a
damaged or foreign run is skipped, so the cell is computed again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import PoisonlabError
from .matrix_grid import Cell
from .provenance import provenance
from .store import read_metrics, run_folder, runs_with_hash
from .store_json import is_number
from .subpop.defended import defense_summary

SUBPOP_MEASURES = ("target_worst_k", "collateral_all", "clean_accuracy", "poisons_removed", "clean_removed")


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


def _badnets_done(metrics: dict[str, Any], defenses: list[str]) -> bool:
    """Whether a BadNets cell's metrics hold every number the matrix reads, of the right type."""
    try:
        cells = cell_summary(metrics, defenses)
        numbers = [metrics["baseline"]["clean_accuracy"], *(c[k] for c in cells.values()
                                                             for k in ("clean_accuracy", "defense_seconds"))]
        optional = [c["attack_success_rate"] for c in cells.values()]
    except (KeyError, TypeError, AttributeError, IndexError):
        return False
    return all(map(is_number, numbers)) and all(v is None or is_number(v) for v in optional)


def _subpop_done(metrics: dict[str, Any], defenses: list[str], alphas: list[float] | None = None) -> bool:
    """Whether a subpop cell's metrics hold every (defense, alpha) entry the matrix reads (every
    alpha of ``alphas`` when given), each number of the right type."""
    if not all(k in metrics for k in ("summary", "time", "model")):
        return False
    try:
        entries = subpop_cell_summary(metrics, defenses)
        ok = is_number(metrics["model"]["clean_accuracy"]) and all(
            is_number(e["alpha"]) and isinstance(e["k"], int) and not isinstance(e["k"], bool)
            and all(isinstance(w, str) for w in e["worst_subpops"])
            and all(e[m] is None or is_number(e[m]) for m in SUBPOP_MEASURES) for e in entries)
        have = {(e["defense"], e["alpha"]) for e in entries}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False
    wanted = ["none", *defenses]
    if not ok or not set(wanted) <= {d for d, _ in have}:
        return False
    return alphas is None or all((d, a) in have for d in wanted for a in alphas)


def find_finished(root: str | Path, chash: str, defenses: list[str], kind: str = "badnets",
                  alphas: list[float] | None = None,
                  current: Callable[[], dict[str, str]] | None = None) -> tuple[str, dict[str, Any]] | None:
    """The newest finished run in store ``root`` with config hash ``chash`` holding every defense; else None.

    With ``current`` (a function giving this code's and data's :func:`~poisonlab.provenance.provenance`,
    called only when a candidate is found), a run counts only when it recorded that same
    provenance: a result computed from other data (the config hash leaves out ``data.dir``)
    or other code is never served.

    A run counts when its index row is intact, its folder ``root/<id>`` holds a valid
    ``metrics.json`` of that hash, and that holds the attacked model (``badnet``; for ``kind``
    ``subpop``: ``summary``, ``model`` and every alpha of ``alphas``) and each defense's
    result, every number the matrix reads of the right type. A damaged cell is not served:
    it is skipped, so the matrix computes it again.
    """
    for row in runs_with_hash(root, chash):
        if row.get("attack") == "matrix":
            continue
        try:
            metrics = read_metrics(run_folder(root, row["id"]))
        except PoisonlabError:
            continue
        if metrics.get("config_hash", chash) != chash:
            continue
        if not (_subpop_done(metrics, defenses, alphas) if kind == "subpop" else _badnets_done(metrics, defenses)):
            continue
        if current is not None and metrics.get("provenance") != current():
            continue
        return row["id"], metrics
    return None


def _provenance_of(cell: Cell, memo: dict[tuple[Any, ...], dict[str, str]]) -> Callable[[], dict[str, str]]:
    """A lazy :func:`provenance` of the data ``cell`` would load (loaded once per data section)."""
    from . import experiment
    from .subpop import experiment as subpop_experiment
    from .subpop.config import SubpopConfig

    data = cell.config.data
    # the loader the cell's own run calls, so the digest is of the data it would train on
    runner = subpop_experiment if isinstance(cell.config, SubpopConfig) else experiment

    def current() -> dict[str, str]:
        key = (runner.__name__, data.name, data.dir, data.download)
        if key not in memo:
            memo[key] = provenance(runner.load_dataset(data.name, data.dir, data.download))
        return memo[key]

    return current
