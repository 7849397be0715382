"""Run folders and the SQLite results index.

A run folder holds ``config.yaml`` (resolved), ``metrics.json``, ``tables/`` (CSV and
markdown), ``weights/`` (safetensors) and ``plots/`` (PNG). It is written under a
temporary name and renamed at the end, so a failed run leaves nothing half-written.
``index.sqlite`` beside the run folders records every run for ``poisonlab runs``.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import PoisonlabError

INDEX_NAME = "index.sqlite"
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


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a model's state as safetensors (never pickle)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``model`` (strict: every tensor must match)."""
    p = Path(path)
    if not p.is_file():
        raise PoisonlabError(f"weights file '{p}' not found")
    try:
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types
        raise PoisonlabError(f"weights file '{p}' is not a valid safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PoisonlabError(f"weights file '{p}' does not fit the model: {first}") from None
    return model


@dataclass
class RunFolder:
    """A run folder being written; ``path`` is the temporary location until committed."""

    root: Path
    run_id: str
    path: Path

    def file(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> None:
        self.file(name).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> None:
        self.file(name).write_text(text)

    @property
    def final_path(self) -> Path:
        return self.root / self.run_id


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def new_run_id(name: str, cfg_hash: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{cfg_hash[:6]}"


@contextmanager
def open_run(root: str | Path, name: str, cfg_hash: str) -> Iterator[RunFolder]:
    """Yield a run folder in a temporary place; rename it into ``root`` on success, delete it on error."""
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(name, cfg_hash)
    n = 1
    while (root_path / run_id).exists():
        n += 1
        run_id = f"{new_run_id(name, cfg_hash)}-{n}"
    tmp = root_path / f".tmp-{run_id}"
    tmp.mkdir()
    folder = RunFolder(root_path, run_id, tmp)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(folder.final_path)
    folder.path = folder.final_path


def _connect(root: Path) -> sqlite3.Connection:
    path = root / INDEX_NAME
    try:
        conn = sqlite3.connect(path)
        conn.execute(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise PoisonlabError(f"run index '{path}' is unreadable ({exc}); move it aside and re-run") from None
    return conn


def read_metrics(run: Path) -> dict[str, Any]:
    """A run folder's ``metrics.json``; a missing or corrupt file is a one-line error."""
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PoisonlabError(f"'{run}' has no metrics.json; it is not a finished run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PoisonlabError(f"'{path}' is corrupt ({exc}); the run cannot be shown") from None


def index_run(root: str | Path, row: dict[str, Any]) -> None:
    """Record a finished run in ``root/index.sqlite``."""
    root_path = Path(root)
    with closing(_connect(root_path)) as conn, conn:
        conn.execute(
            "INSERT OR REPLACE INTO runs (id, created, name, dataset, model, attack, config_hash, seed, version,"
            " summary, metrics, path) VALUES (:id, :created, :name, :dataset, :model, :attack, :config_hash, :seed,"
            " :version, :summary, :metrics, :path)",
            {**row, "summary": json.dumps(row.get("summary", {}), default=_json_default),
             "metrics": json.dumps(row.get("metrics", {}), default=_json_default)},
        )


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every indexed run, newest first."""
    root_path = Path(root)
    if not (root_path / INDEX_NAME).is_file():
        return []
    with closing(_connect(root_path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs ORDER BY created DESC, id DESC").fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["summary"] = json.loads(d["summary"] or "{}")
        d["metrics"] = json.loads(d["metrics"] or "{}")
        out.append(d)
    return out


def find_run(root: str | Path, key: str) -> Path:
    """A run folder by id, unique id prefix, or path."""
    p = Path(key)
    if p.is_dir() and (p / "metrics.json").is_file():
        return p
    root_path = Path(root)
    runs = [r for r in list_runs(root_path) if r["id"] == key or r["id"].startswith(key)]
    if not runs and root_path.is_dir():
        runs = [{"id": d.name, "path": str(d)} for d in sorted(root_path.iterdir())
                if d.is_dir() and d.name.startswith(key) and (d / "metrics.json").is_file()]
    exact = [r for r in runs if r["id"] == key]
    if exact:
        runs = exact
    if not runs:
        raise PoisonlabError(f"no run '{key}' in {root_path}; list runs with 'poisonlab runs'")
    if len(runs) > 1:
        raise PoisonlabError(f"'{key}' matches {len(runs)} runs ({', '.join(r['id'] for r in runs[:3])}...); give more of the id")
    return Path(runs[0]["path"])
