"""What ``poisonlab runs``, ``show`` and ``traffic-table`` read from a run store, checked.

Index rows and run folders may be damaged or hostile: a field of the wrong type is a
one-line :class:`~poisonlab.store_json.StoreDamage`, text is shown on one line without
control characters (no terminal escapes) and without rich markup, files are read only
when they are regular and small.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .errors import PoisonlabError, one_line
from .store_index import damaged, index_file
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
