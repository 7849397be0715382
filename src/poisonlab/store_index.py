"""The SQLite index of a run store (``index.sqlite``): one row per finished run.

Writers take the write lock at the start of their transaction (``BEGIN IMMEDIATE``) and wait
up to :data:`BUSY_TIMEOUT_S` for it, so concurrent runs queue instead of failing. The
default rollback journal is kept: it works on every file system (WAL needs shared memory,
which network file systems lack), and a writer holds the lock for one short ``INSERT``.

The file may be damaged or hostile. Opening something that is not a regular file or not a
database, a corrupt page, a ``runs`` table without the expected columns, or a row whose
fields have the wrong types or hold invalid JSON is a one-line :class:`StoreDamage` naming
the file and saying to move it aside: runs check the index before any training
(:func:`check_index`). Rows are written after their run folder is in place, so a row never
points at a half-written run; a run whose row cannot be written then (the index was damaged
meanwhile, or stayed locked) still succeeds with one warning line, its folder complete but
unlisted (:func:`poisonlab.store.record_run`).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import PoisonlabError, one_line, shown
from .store_json import StoreDamage, loads

INDEX_NAME = "index.sqlite"
BUSY_TIMEOUT_S = 30.0
COLUMNS = ("id", "created", "name", "dataset", "model", "attack", "config_hash", "seed", "version", "summary",
           "metrics", "path")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    name TEXT NOT NULL,
    dataset TEXT,
    model TEXT,
    attack TEXT,
    config_hash TEXT NOT NULL,
    seed INTEGER,
    version TEXT,
    summary TEXT,
    metrics TEXT,
    path TEXT NOT NULL
)
"""
RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")
"""What a run id may look like: a plain folder name (no separator, no leading dot)."""


def index_file(root: str | Path) -> Path:
    return Path(root) / INDEX_NAME


def damaged(path: Path, why: str) -> StoreDamage:
    """The one-line error for a damaged index."""
    return StoreDamage(f"run index '{path}' is unreadable ({one_line(why, 160)}); move it aside "
                       f"(e.g. mv '{path}' '{path}.bad') and run again; the run folders are kept")


def _error(path: Path, exc: sqlite3.Error) -> PoisonlabError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return PoisonlabError(f"run index '{path}' stayed locked by another process for {BUSY_TIMEOUT_S:.0f}s; "
                              f"wait for the other runs to finish and run again")
    return damaged(path, text)


@contextmanager
def connect(root: str | Path, write: bool = False, read_only: bool = False) -> Iterator[sqlite3.Connection | None]:
    """A connection to the index with its schema checked; None for a reader when there is no
    index or no ``runs`` table yet. ``read_only`` opens it so that nothing can be changed."""
    path = index_file(root)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not write:
            yield None
            return
    except OSError as exc:
        raise damaged(path, exc.strerror or str(exc)) from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise damaged(path, "not a regular file")
    try:
        target = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=read_only)
    except sqlite3.Error as exc:
        raise _error(path, exc) from None
    with closing(conn):
        try:
            columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
            if not columns and write:
                conn.execute(_SCHEMA)
                columns = list(COLUMNS)
        except sqlite3.Error as exc:
            raise _error(path, exc) from None
        missing = [c for c in COLUMNS if c not in columns]
        if columns and missing:
            raise damaged(path, f"its runs table lacks the columns {', '.join(missing)}; not poisonlab's schema")
        try:
            yield conn if columns else None
        except sqlite3.IntegrityError as exc:
            raise damaged(path, f"its runs table refuses a row ({exc}); not poisonlab's schema") from None
        except sqlite3.Error as exc:
            raise _error(path, exc) from None


def check_index(root: str | Path) -> None:
    """Fail now, before any training, when the index of ``root`` is damaged."""
    with connect(root) as conn:
        if conn is not None:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise damaged(index_file(root), "; ".join(map(str, problems[:2])))


def index_run(root: str | Path, row: dict[str, Any]) -> None:
    """Record a finished run in ``root/index.sqlite`` (one transaction; waits for other writers)."""
    from .store import json_default

    values = {**row, "summary": json.dumps(row.get("summary", {}), default=json_default),
              "metrics": json.dumps(row.get("metrics", {}), default=json_default)}
    with connect(root, write=True) as conn:
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) "
                         f"VALUES ({', '.join(':' + c for c in COLUMNS)})", values)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def check_row(raw: dict[str, Any], path: Path, parse_json: bool = True) -> dict[str, Any]:
    """An index row with every field's type checked (and the JSON columns decoded when
    ``parse_json``); a :class:`StoreDamage` naming the row otherwise."""
    rid = raw.get("id")
    where = f"row {shown(rid, 60)}"
    if not isinstance(rid, str) or not RUN_ID.match(rid):
        raise damaged(path, f"{where}: the id is not a run folder name")
    for key in ("created", "name", "config_hash", "path"):
        if key in raw and not isinstance(raw[key], str):
            raise damaged(path, f"{where}: {key} is {type(raw[key]).__name__}, not text")
    if "path" in raw and ("\0" in raw["path"] or not raw["path"] or len(raw["path"]) > 4096):
        raise damaged(path, f"{where}: path is not a folder path")
    for key in ("dataset", "model", "attack", "version"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise damaged(path, f"{where}: {key} is {type(raw[key]).__name__}, not text")
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise damaged(path, f"{where}: seed is {type(seed).__name__}, not an integer")
    out = dict(raw)
    for key in ("summary", "metrics"):
        if not parse_json or key not in raw:
            continue
        text = raw[key]
        if text is None:
            out[key] = {}
            continue
        if not isinstance(text, str):
            raise damaged(path, f"{where}: {key} is {type(text).__name__}, not JSON text")
        try:
            value = loads(text, f"{where}'s {key}")
        except StoreDamage as exc:
            raise damaged(path, str(exc)) from None
        if not isinstance(value, dict):
            raise damaged(path, f"{where}: {key} holds {type(value).__name__}, not a mapping")
        out[key] = value
    return out


def _select(conn: sqlite3.Connection, columns: tuple[str, ...], where: str = "", args: tuple[Any, ...] = (),
            limit: int | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(columns)} FROM runs {where} ORDER BY created DESC, id DESC LIMIT ?"
    return [dict(zip(columns, r)) for r in conn.execute(sql, (*args, -1 if limit is None else limit))]


def list_runs(root: str | Path, limit: int | None = None, with_metrics: bool = True) -> list[dict[str, Any]]:
    """Indexed runs, newest first (at most ``limit``); any damaged row is a one-line error.
    ``with_metrics=False`` leaves the (large) ``metrics`` column out."""
    columns = COLUMNS if with_metrics else tuple(c for c in COLUMNS if c != "metrics")
    with connect(root) as conn:
        raw = [] if conn is None else _select(conn, columns, limit=limit)
    return [check_row(r, index_file(root)) for r in raw]


def runs_with_hash(root: str | Path, chash: str) -> list[dict[str, Any]]:
    """The rows of config hash ``chash``, newest first, JSON columns left out; damaged rows
    are skipped (a caller reusing results recomputes rather than trusts them)."""
    columns = tuple(c for c in COLUMNS if c not in ("summary", "metrics"))
    with connect(root) as conn:
        raw = [] if conn is None else _select(conn, columns, "WHERE config_hash = ?", (chash,))
    out = []
    for r in raw:
        try:
            out.append(check_row(r, index_file(root), parse_json=False))
        except StoreDamage:
            continue
    return out


def runs_matching(root: str | Path, key: str) -> list[dict[str, Any]]:
    """``id`` and ``path`` of the rows whose id is ``key`` or starts with it; a damaged
    matching row is a one-line error."""
    with connect(root) as conn:
        raw = [] if conn is None else _select(conn, ("id", "path"), "WHERE substr(id, 1, ?) = ?", (len(key), key))
    return [check_row(r, index_file(root), parse_json=False) for r in raw]
