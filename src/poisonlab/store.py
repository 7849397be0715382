"""Run folders of a run store, and their files.

A run folder holds ``config.yaml`` (resolved), ``metrics.json``, ``tables/`` (CSV and
markdown), ``weights/`` (safetensors) and ``plots/`` (PNG). It is written into a uniquely
named temporary folder that records its owner (:mod:`poisonlab.store_tmp`) and renamed to
its run id when complete, so a failed or killed run leaves nothing half-written in view; the
next run deletes the temporary folders of dead processes. ``index.sqlite`` beside the run
folders records every run for ``poisonlab runs`` (:mod:`poisonlab.store_index`). Everything
read back is checked (:mod:`poisonlab.store_json`): damage is a one-line error.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import store_tmp
from .errors import PoisonlabError, one_line
from .store_index import (  # noqa: F401  (the index API, re-exported)
    INDEX_NAME,
    RUN_ID,
    check_index,
    index_run,
    list_runs,
    runs_matching,
    runs_with_hash,
)
from .store_json import StoreDamage, check_metrics, read_json

CACHE_DIR = ".cache"
"""The baseline cache's folder in a run store (:mod:`poisonlab.baseline_cache`)."""


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
        self.file(name).write_text(json.dumps(obj, indent=2, default=json_default) + "\n")

    def write_text(self, name: str, text: str) -> None:
        self.file(name).write_text(text)

    @property
    def final_path(self) -> Path:
        return self.root / self.run_id


def json_default(obj: Any) -> Any:
    """JSON for the numpy, torch and path values metrics hold."""
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
    """``<date>-<time>-<name>-<hash6>``: the first choice of id for a run (not unique alone)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{cfg_hash[:6]}"


def prepare_root(root: str | Path) -> Path:
    """The run store ``root``, created when missing; a one-line error when it is a file, cannot be
    created or written, or its index is damaged. Runs call it before any training."""
    path = Path(root)
    where = f"output.dir '{path}'"
    if path.exists() and not path.is_dir():
        raise PoisonlabError(f"{where} is a file, not a folder; set output.dir (or --output) to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PoisonlabError(f"{where} cannot be created: a part of its path is a file; set output.dir "
                             f"(or --output) to a folder") from None
    except OSError as exc:
        raise PoisonlabError(f"{where} cannot be created ({exc.strerror or exc}); set output.dir (or --output) "
                             f"to a folder you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PoisonlabError(f"{where} is not writable; set output.dir (or --output) to a folder you can write")
    check_index(path)
    return path


def _commit(tmp: Path, root: Path, first_id: str) -> str:
    """Rename finished folder ``tmp`` to ``first_id`` in ``root``, or, where a run of that id
    exists (two runs in the same second), ``first_id-2``, ``-3``...; never replaces one."""
    for n in range(1, 10_000):
        run_id = first_id if n == 1 else f"{first_id}-{n}"
        final = root / run_id
        if os.path.lexists(final):
            continue
        try:
            os.rename(tmp, final)  # onto a non-empty run folder this fails; no run folder is empty
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                continue
            raise PoisonlabError(f"cannot move the finished run '{tmp}' to '{final}' "
                                 f"({exc.strerror or exc})") from None
        return run_id
    raise PoisonlabError(f"no free run id '{first_id}-N' in {root}; clean up the run store")


def note(line: str) -> None:
    """A one-line notice on standard error (never on standard output, which scripts read)."""
    print(one_line(line), file=sys.stderr, flush=True)


@contextmanager
def open_run(root: str | Path, name: str, cfg_hash: str) -> Iterator[RunFolder]:
    """Yield a run folder in a temporary place; rename it into ``root`` on success (its final id
    is then ``folder.run_id``), delete it on error. Temporary folders of dead runs are removed first."""
    root_path = prepare_root(root)
    stale = store_tmp.remove_stale(root_path)
    if (root_path / CACHE_DIR).is_dir():
        stale += [f"{CACHE_DIR}/{n}" for n in store_tmp.remove_stale(root_path / CACHE_DIR)]
    if stale:
        note(f"removed {len(stale)} temporary folder(s) of killed runs from {root_path}: "
             + ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else ""))
    first_id = new_run_id(name, cfg_hash)
    try:
        tmp = store_tmp.make_dir(root_path)
    except OSError as exc:
        raise PoisonlabError(f"cannot write in output.dir '{root_path}' ({exc.strerror or exc}); set output.dir "
                             f"(or --output) to a folder you can write") from None
    folder = RunFolder(root_path, first_id, tmp)
    try:
        yield folder
        store_tmp.publish_mode(tmp)
        folder.run_id = _commit(tmp, root_path, first_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    folder.path = folder.final_path


def record_run(root: str | Path, row: dict[str, Any]) -> bool:
    """Index a run whose folder is already in place. A run that cannot be indexed (the index
    was damaged or stayed locked meanwhile) still succeeds: its folder is complete, so this
    prints one warning line and returns False."""
    try:
        index_run(root, row)
    except PoisonlabError as exc:
        note(f"warning: run folder {row.get('path')} is complete but not indexed: {exc}")
        return False
    return True


def read_metrics(run: Path) -> dict[str, Any]:
    """A run folder's ``metrics.json``, bounded and with the fields every run has checked;
    missing, corrupt or wrong-shaped is a one-line error."""
    path = run / "metrics.json"
    try:
        return check_metrics(read_json(path, "it"), "it")
    except FileNotFoundError:
        raise PoisonlabError(f"'{run}' has no metrics.json; it is not a finished run folder") from None
    except StoreDamage as exc:
        raise StoreDamage(f"'{path}' is corrupt: {exc}; the run cannot be shown or reused") from None


def run_folder(root: str | Path, run_id: str) -> Path:
    """Where run ``run_id`` of store ``root`` lives (``root/run_id``; ids are plain names)."""
    if not RUN_ID.match(run_id):
        raise StoreDamage(f"run id {one_line(repr(run_id), 80)} is not a folder name")
    return Path(root) / run_id


def find_run(root: str | Path, key: str) -> Path:
    """A run folder by id, unique id prefix, or path."""
    p = Path(key)
    if p.is_dir() and (p / "metrics.json").is_file():
        return p
    root_path = Path(root)
    runs = runs_matching(root_path, key) if key else []
    if not runs and root_path.is_dir():
        runs = [{"id": d.name, "path": str(d)} for d in sorted(root_path.iterdir())
                if d.is_dir() and RUN_ID.match(d.name) and d.name.startswith(key) and (d / "metrics.json").is_file()]
    exact = [r for r in runs if r["id"] == key]
    if exact:
        runs = exact
    if not runs:
        raise PoisonlabError(f"no run '{one_line(key, 80)}' in {root_path}; list runs with 'poisonlab runs'")
    if len(runs) > 1:
        raise PoisonlabError(f"'{one_line(key, 80)}' matches {len(runs)} runs ({', '.join(r['id'] for r in runs[:3])}"
                             f"...); give more of the id")
    folder = run_folder(root_path, runs[0]["id"])
    if not folder.is_dir():
        raise PoisonlabError(f"run {runs[0]['id']} is in the index of {root_path} but its folder is missing; "
                             f"'poisonlab doctor' lists such rows")
    return folder
