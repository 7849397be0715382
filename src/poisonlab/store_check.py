"""A read-only check of a run store, for ``poisonlab doctor``.

:func:`check_store` lists what a run would refuse or could not use, and what is left over:
an index that fails ``PRAGMA integrity_check`` or has the wrong schema, index rows with bad
JSON or fields or pointing at no folder, run folders with a missing or invalid
``metrics.json``, damaged or non-finite baseline cache entries, temporary folders of dead
runs (and, as info, those of live ones). It opens the index read-only and writes nothing.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from . import store_tmp
from .baseline_cache import CACHE_DIR, check_cache
from .errors import PoisonlabError, one_line
from .store import read_metrics
from .store_index import COLUMNS, INDEX_NAME, connect, check_row, damaged, index_file

REFUSED, WARNING, INFO = "refused", "warning", "info"
Finding = tuple[str, str, str]
"""(path, status, problem): status ``refused`` (poisonlab will not use it), ``warning``
(left over, harmless) or ``info``."""


def _index(root: Path) -> tuple[list[Finding], set[str]]:
    """Problems of the index and the ids of its sound rows."""
    path = index_file(root)
    if not path.exists() and not path.is_symlink():
        return [], set()
    found: list[Finding] = []
    ids: set[str] = set()
    try:
        with connect(root, read_only=True) as conn:
            if conn is None:
                return [(str(path), WARNING, "holds no runs table (an empty or foreign database); a run adds one")], ids
            result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                found.append((str(path), REFUSED, str(damaged(path, "integrity check: " + "; ".join(result[:3])))))
                return found, ids
            raw = [dict(zip(COLUMNS, r)) for r in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM runs")]
    except (PoisonlabError, sqlite3.Error) as exc:
        return [(str(path), REFUSED, one_line(str(exc)))], ids
    for r in raw:
        try:
            row = check_row(r, path)
        except PoisonlabError as exc:
            found.append((str(path), REFUSED, one_line(str(exc))))
            continue
        ids.add(row["id"])
        if not (root / row["id"]).is_dir():
            found.append((str(path), WARNING, f"row {row['id']} points at a run folder that does not exist"))
    return found, ids


def _folders(root: Path, indexed: set[str]) -> list[Finding]:
    found: list[Finding] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name.startswith(INDEX_NAME) or not entry.is_dir():
            continue
        try:
            read_metrics(entry)
        except PoisonlabError as exc:
            found.append((str(entry), REFUSED, f"not a valid run folder: {one_line(str(exc), 300)}"))
            continue
        if entry.name not in indexed:
            found.append((str(entry), INFO, "a complete run folder that is not in the index (not listed by "
                                            "'poisonlab runs', not reused by a matrix)"))
    return found


def _temporaries(folder: Path) -> list[Finding]:
    found: list[Finding] = []
    for path, status, pid in store_tmp.temporaries(folder):
        if status == "dead":
            found.append((str(path), WARNING, f"left by a killed run (pid {pid} is gone); the next run deletes it"))
        elif status == "live":
            found.append((str(path), INFO, f"being written by a running poisonlab (pid {pid})"))
        elif status == "foreign":
            found.append((str(path), WARNING, "made on another machine; left alone: delete it when no run "
                                              "writes there"))
        else:
            found.append((str(path), WARNING, "owner unknown (an older poisonlab?); left alone: delete it when no "
                                              "run writes there"))
    return found


def check_store(root: Path) -> list[Finding]:
    """Every problem of run store ``root`` as (path, status, problem); changes nothing."""
    root = Path(root)
    if not root.is_dir():
        return [(str(root), REFUSED, "not a folder; runs cannot be written here")]
    found, indexed = _index(root)
    found += _folders(root, indexed)
    cache = root / CACHE_DIR
    found += [(path, REFUSED, problem) for path, problem in check_cache(cache)]
    found += _temporaries(root) + (_temporaries(cache) if cache.is_dir() else [])
    return found
