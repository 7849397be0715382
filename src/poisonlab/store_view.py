"""What ``poisonlab runs``, ``show`` and ``traffic-table`` read from a run store, checked.

Index rows and run folders may be damaged or hostile: a field of the wrong type is a
one-line :class:`~poisonlab.store_json.StoreDamage`, text is shown on one line without
control characters (no terminal escapes) and without rich markup, files are read only
when they are regular and small.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from .errors import PoisonlabError, one_line
from .store_index import RUN_ID, damaged, index_file
from .store_json import StoreDamage, is_number

MAX_TABLE_BYTES = 1 << 20
MAX_TABLES = 100


def summary_number(row: dict[str, Any], key: str, root: str | Path) -> float | None:
    """``row["summary"][key]``: a number, or None when absent; a one-line error otherwise."""
    v = row["summary"].get(key)
    if v is None or is_number(v):
        return v
    raise damaged(index_file(root), f"row {row['id']}: summary {key} is {type(v).__name__}, not a number")


def cell(value: Any, limit: int = 80) -> Any:
    """A table cell that shows ``value`` as plain text on one line (no markup, no escapes)."""
    from rich.text import Text

    return Text("–" if value is None else one_line(str(value), limit))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() or c in "\n\t" else " " for c in text)


def table_texts(run: Path) -> list[str]:
    """The markdown tables of a run folder (``tables/*.md``, sorted): regular files of at
    most :data:`MAX_TABLE_BYTES` only, shown without control characters; others are named."""
    folder = run / "tables"
    if not folder.is_dir():
        return []
    out = []
    for md in sorted(folder.glob("*.md"))[:MAX_TABLES]:
        try:
            info = os.stat(md)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TABLE_BYTES:
                out.append(f"({one_line(md.name, 80)}: not shown, not a regular file of at most 1 MiB)")
                continue
            out.append(_printable(md.read_bytes()[:MAX_TABLE_BYTES].decode("utf-8", "replace")).rstrip())
        except OSError as exc:
            out.append(f"({one_line(md.name, 80)}: unreadable, {exc.strerror or exc})")
    return out


def plot_names(run: Path) -> list[str]:
    """Names of the run's plots (``plots/*.png``), on one line each."""
    folder = run / "plots"
    return [one_line(p.name, 80) for p in sorted(folder.glob("*.png"))[:MAX_TABLES]] if folder.is_dir() else []


def traffic_groups(metrics: dict[str, Any], run: Path) -> tuple[str, dict[str, float], tuple[Any, Any]]:
    """(trigger name, baseline clean scores, (BadNet clean, backdoor)) of a GTSRB run, checked."""
    from .traffic_report import traffic_table

    groups = metrics.get("traffic_groups")
    if groups is None:
        raise PoisonlabError(f"run {run.name} has no traffic-sign groups; they come from GTSRB runs with a "
                             f"single-target attack from one source class")
    damage = f"'{run / 'metrics.json'}' has damaged traffic_groups"
    if not isinstance(groups, dict) or not all(k in groups for k in ("trigger", "baseline_clean", "badnet_clean",
                                                                      "badnet_backdoor")):
        raise StoreDamage(f"{damage} (not a mapping of trigger, baseline_clean, badnet_clean, badnet_backdoor)")
    name = groups["trigger"]
    if not isinstance(name, str) or not name.strip():
        raise StoreDamage(f"{damage} (the trigger is not a name)")
    pair = (groups["badnet_clean"], groups["badnet_backdoor"])
    try:
        traffic_table(groups["baseline_clean"], {"x": pair})
    except PoisonlabError as exc:
        raise StoreDamage(f"{damage} ({exc})") from None
    return one_line(name, 40), groups["baseline_clean"], pair


# -- poisonlab runs -----------------------------------------------------------------------
RUN_COLUMNS: tuple[tuple[str, int], ...] = (
    # (header, rank): rank 0 is always shown; on a narrow terminal the headline columns (1, 2)
    # next, then the others in rank order while they fit
    ("id", 0), ("date", 9), ("name", 0), ("data", 7), ("model", 8), ("attack", 0), ("seed", 6),
    ("baseline acc", 4), ("victim acc", 3), ("attack success", 1), ("result", 2), ("s", 5),
)
"""The columns of ``poisonlab runs``: baseline acc is the clean baseline's (step families) or the
clean model's (subpopulation sweeps); victim acc and attack success the victim's; result a
family's own headline (a sweep's worst-k target damage at its largest alpha, a matrix's cells)."""

HEADLINE = "headline"
"""On a narrow terminal listing runs of several families: attack success and result in one column."""

GAP = 3
"""Characters between two columns of the compact runs table (padding, space, padding)."""

_WORST = re.compile(r"worst(\d+)_target_alpha(.+)")


def _pct(v: float | None) -> str:
    from .report import pct

    return pct(v)


def _result(row: dict[str, Any], root: str | Path) -> tuple[str, str]:
    """A family's headline, long and short: a matrix's cells, a sweep's worst-k target damage
    at its largest alpha (k = 5 where the summary has it, else its smallest k)."""
    s = row["summary"]
    if "cells" in s:
        cells, reused = (summary_number(row, k, root) for k in ("cells", "reused"))
        return f"{cells or 0:.0f} cells, {reused or 0:.0f} reused", f"{cells or 0:.0f} cells"
    worst = []  # (alpha, k is 5, -k, k, value)
    for key in s:
        m = _WORST.fullmatch(key)
        value = summary_number(row, key, root) if m else None
        if m and value is not None:
            try:
                alpha, k = float(m.group(2)), int(m.group(1))
            except ValueError:
                continue
            worst.append((alpha, k == 5, -k, k, value))
    if not worst:
        return "–", "–"
    alpha, _, _, k, value = max(worst)
    return f"worst-{k} damage {value:.3f} (α {alpha:g})", f"damage {value:.3f}"


def run_cells(row: dict[str, Any], root: str | Path) -> dict[str, str]:
    """One index row as the text of each :data:`RUN_COLUMNS` column (and :data:`HEADLINE`); a
    summary value of the wrong type is a one-line :class:`StoreDamage`. Runs of every family:
    step families (victim metrics under ``victim``, older runs ``badnet``), subpopulation sweeps
    and matrices."""
    def first(*keys: str) -> float | None:
        for k in keys:
            v = summary_number(row, k, root)
            if v is not None:
                return v
        return None

    seconds, success = first("seconds"), first("attack_success")
    texts = {"id": row["id"], "date": row.get("created"), "name": row.get("name"), "data": row.get("dataset"),
             "model": row.get("model"), "attack": row.get("attack"), "seed": row.get("seed")}
    out = {k: "–" if v is None else one_line(str(v), 80) for k, v in texts.items()}
    result, short = _result(row, root)
    out.update({"baseline acc": _pct(first("baseline_clean_acc", "clean_acc")),
                "victim acc": _pct(first("victim_clean_acc", "badnet_clean_acc")),
                "attack success": _pct(success), "result": result,
                HEADLINE: short if success is None else f"success {_pct(success)}",
                "s": "–" if seconds is None else f"{seconds:.0f}"})
    return out


def _longest_word(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for w in text.split()), default=0)


NARROW_HEADERS = {HEADLINE: "result", "attack success": "success"}
"""Shorter headers of the compact runs table."""


def _natural(cells: list[dict[str, str]], column: str, header: str | None = None) -> int:
    from rich.cells import cell_len

    return max(cell_len(header or column), *(cell_len(r[column]) for r in cells))


def boxed_width(cells: list[dict[str, str]], columns: list[str]) -> int:
    """The width of the runs table with ``columns`` in a box and nothing wrapped."""
    return sum(_natural(cells, c) for c in columns) + 3 * len(columns) + 1


def narrow_layout(cells: list[dict[str, str]], width: int) -> dict[str, int]:
    """The columns of a compact runs table (a rule under the header, three spaces between
    columns) that fit ``width``, with their widths: id, name, attack and the headline columns
    that hold a value (attack success and result as one column when both do), wrapped at spaces
    where they must be (no column narrower than its longest word unless these alone do not
    fit); then the others that hold a value, by rank, while everything fits unwrapped."""
    used = {c for c, _ in RUN_COLUMNS if any(r[c] != "–" for r in cells)}
    headline = [c for c in ("attack success", "result") if c in used]
    keep = ["id", "name", "attack", *([HEADLINE] if len(headline) == 2 else headline)]
    header = {c: NARROW_HEADERS.get(c, c) for c in [*(c for c, _ in RUN_COLUMNS), HEADLINE]}
    need = {c: _natural(cells, c) if c == "id" else max(_longest_word(h), *(_longest_word(r[c]) for r in cells))
            for c, h in header.items()}
    natural = {c: _natural(cells, c, h) for c, h in header.items()}
    total = lambda cols: sum(natural[c] for c in cols) + GAP * (len(cols) - 1)  # noqa: E731
    for c, rank in sorted(RUN_COLUMNS, key=lambda x: x[1]):
        if rank >= 3 and c in used and total(keep + [c]) <= width:
            keep.append(c)
    order = [c for c, _ in RUN_COLUMNS]
    order.insert(order.index("result"), HEADLINE)
    widths = {c: natural[c] for c in order if c in keep}
    excess = sum(widths.values()) + GAP * (len(widths) - 1) - width
    while excess > 0:  # narrow the widest column that is wider than its longest word
        room = [c for c in widths if c != "id" and widths[c] > need[c]]
        if not room:
            break
        c = max(room, key=lambda c: widths[c])
        widths[c] -= 1
        excess -= 1
    while excess > 0:  # the always-shown columns alone are too wide: fold the widest text
        c = max((c for c in widths if c != "id"), key=lambda c: widths[c])
        if widths[c] <= 4:
            break
        widths[c] -= 1
        excess -= 1
    return widths


def terminal_width() -> int | None:
    """The width of the terminal standard output is, or None when it is not one (a file, a pipe)."""
    from rich.console import Console

    console = Console(file=sys.stdout)
    return console.width if console.is_terminal else None


def print_runs(rows: list[dict[str, Any]], root: str | Path, wide: bool = False) -> None:
    """The runs table on standard output: every column in a box when it fits, or when standard
    output is not a terminal, or with ``wide`` (never squeezed: lines may be longer than the
    terminal); on a terminal too narrow for it, the columns of :func:`narrow_layout`."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    cells = [run_cells(r, root) for r in rows]  # damage: one line, before any output
    names = [c for c, _ in RUN_COLUMNS]
    term = terminal_width()
    title = cell(f"runs in {root}", 200)
    if term is None or wide or boxed_width(cells, names) <= term:
        width = max(term or 200, boxed_width(cells, names))
        table = Table(title=title)
        for c in names:
            table.add_column(c, no_wrap=c == "id")
        shown = names
    else:
        width = term
        layout = narrow_layout(cells, term)
        table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
        for c, w in layout.items():
            table.add_column(NARROW_HEADERS.get(c, c), width=w, no_wrap=c == "id",
                             overflow="ellipsis" if c == "id" else "fold")
        shown = list(layout)
    for r in cells:
        table.add_row(*(cell(r[c]) for c in shown))
    # no styles: a line is as long as it looks (and hostile text cannot restyle it)
    console = Console(file=sys.stdout, width=width, color_system=None)
    console.print(table)
    hidden = len(names) - len([c for c in shown if c != HEADLINE]) - (HEADLINE in shown) * 2
    if hidden > 0:
        console.print(cell(f"({hidden} columns hidden to fit {term} characters; --wide shows all)"))


# -- poisonlab show --json ----------------------------------------------------------------
def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON, which jq reads)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def index_row(run: Path) -> dict[str, Any] | None:
    """The index row of run folder ``run`` in its store (the folder above it), without the
    metrics column; None when the store has no index or no row of that id. Damage is one line."""
    from .store_index import COLUMNS, _select, check_row, connect

    if not RUN_ID.match(run.name):
        return None
    columns = tuple(c for c in COLUMNS if c != "metrics")
    with connect(run.parent) as conn:
        raw = [] if conn is None else _select(conn, columns, "WHERE id = ?", (run.name,), limit=1)
    return check_row(raw[0], index_file(run.parent)) if raw else None


def run_json(run: Path, metrics: dict[str, Any]) -> str:
    """``poisonlab show --json``: the run's id, folder, index summary (null when not indexed) and
    metrics.json, as strict JSON (NaN and infinities as null)."""
    where = run.resolve()
    row = index_row(where)
    out = {"id": where.name, "path": str(run), "summary": row["summary"] if row else None, "metrics": metrics}
    return json.dumps(_strict(out), indent=2, allow_nan=False)
