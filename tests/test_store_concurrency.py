"""The run store under concurrency and kills: runs started at once all land, a `kill -9` at a
random point leaves nothing half-written in view, and the next run cleans up and reuses."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from hostile import run_cli
from poisonlab import store
from poisonlab.matrix import grid_from_dict
from poisonlab.store import index_run, list_runs, open_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits_badnets.yaml"
TINY = ["train.epochs=1", "output.plots=false", "analysis.backdoor_neurons=false", "output.save_weights=false",
        "data.train_limit=400", "device=cpu"]
SETS = [a for s in TINY for a in ("--set", s)]
# a real training run maps far more address space than it touches (a malloc arena and a stack
# per thread), so these children get a looser cap than the bomb tests' 2 GiB
RUN_CAP_MIB = 8192


def assert_consistent(root: Path) -> list[dict]:
    """Nothing half-written in view: every run folder has a complete metrics.json, every index
    row names an existing run folder; returns the index rows."""
    rows = list_runs(root)
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            store.read_metrics(d)  # raises on a missing or partial file
    for r in rows:
        assert (root / r["id"] / "metrics.json").is_file(), f"row {r['id']} points at nothing"
    return rows


def temporaries(root: Path) -> list[str]:
    return [p.name for p in [*root.glob(".tmp-*"), *root.glob(".cache/.tmp-*")]]


def test_eight_runs_at_once_all_land(tmp_path):
    runs = tmp_path / "runs"
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: run_cli(["run", str(EXAMPLE), "-q", "--output", str(runs), *SETS],
                                               timeout=120, cap_mib=RUN_CAP_MIB), range(8)))
    for out in outs:
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    rows = assert_consistent(runs)
    folders = {Path(out.stdout.split("run folder:")[1].split()[0]).name for out in outs}
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8 and folders == {r["id"] for r in rows}
    assert temporaries(runs) == []


def _write_rows(root: str, worker: int, n: int) -> None:
    for i in range(n):
        index_run(root, {"id": f"w{worker}-{i}", "created": "2026-01-01 00:00:00", "name": "t", "dataset": None,
                         "model": None, "attack": None, "config_hash": "0", "seed": i, "version": None,
                         "summary": {"i": i}, "metrics": {"w": worker}, "path": f"{root}/w{worker}-{i}"})


def test_index_writers_wait_for_each_other(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_rows, args=(str(tmp_path), w, 25)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    rows = list_runs(tmp_path)
    assert len(rows) == 200 and {r["metrics"]["w"] for r in rows} == set(range(8))


def test_same_second_ids_get_a_suffix_and_never_replace(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "new_run_id", lambda name, h: "fixed")
    (tmp_path / "fixed-3").mkdir()  # an empty folder of that name is not a run: it is not replaced
    ids = []
    for i in range(3):
        with open_run(tmp_path, "t", "0" * 12) as folder:
            folder.write_json("metrics.json", {"i": i})
        ids.append(folder.run_id)
    assert ids == ["fixed", "fixed-2", "fixed-4"]
    assert [json.loads((tmp_path / i / "metrics.json").read_text())["i"] for i in ids] == [0, 1, 2]
    assert list((tmp_path / "fixed-3").iterdir()) == []


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POISONLAB_DATA": str(cwd / ".no-data"),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "poisonlab.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds`` (True) unless it finished first (False)."""
    try:
        proc.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    finally:
        proc.communicate()


def _wait_for_temporary(root: Path, proc: subprocess.Popen, limit: float = 60.0) -> None:
    end = time.perf_counter() + limit
    while not temporaries(root) and proc.poll() is None and time.perf_counter() < end:
        time.sleep(0.01)


@pytest.mark.parametrize("when,seed", [("anywhere", 11), ("while-writing", 12)])
def test_kill_run_at_random_point_then_rerun(tmp_path, when, seed):
    runs = tmp_path / "runs"
    args = ["run", str(EXAMPLE), "-q", "--output", str(runs), *SETS]
    rng = random.Random(seed)
    proc = _start(args, tmp_path)
    if when == "anywhere":  # import, data, training, writing, indexing: about 5 s in all
        delay = rng.uniform(1.0, 6.0)
    else:  # from the moment the temporary run folder exists
        _wait_for_temporary(runs, proc)
        delay = rng.uniform(0.0, 0.8)
    _kill_after(proc, delay)
    before = assert_consistent(runs) if runs.is_dir() else []
    stale = temporaries(runs) if runs.is_dir() else []
    out = run_cli(args, cwd=tmp_path, timeout=120, cap_mib=RUN_CAP_MIB)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = assert_consistent(runs)
    assert len(rows) == len(before) + 1 and temporaries(runs) == []
    notes = [ln for ln in out.stderr.splitlines() if ln.strip()]
    if stale:  # the killed run's leftovers are removed and reported on one line
        assert len(notes) == 1 and "temporary folder(s) of killed runs" in notes[0], out.stderr
    else:
        assert notes == [], out.stderr


def _grid(out: Path) -> dict:
    return {"name": "killed", "base": {"device": "cpu", "data": {"name": "digits", "val_fraction": 0.1,
                                                                   "train_limit": 1000},
                                       "train": {"epochs": 2}, "analysis": {"backdoor_neurons": False}},
            "attacks": {"pattern": {"name": "badnets", "p": 0.1}}, "seeds": [0, 1, 2],
            "output": {"dir": str(out), "plots": False, "save_weights": False}}


def test_kill_matrix_at_random_point_then_rerun_reuses_finished_cells(tmp_path):
    runs = tmp_path / "runs"
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_grid(runs)))
    hashes = {c.hash for c in grid_from_dict(_grid(runs)).cells}
    proc = _start(["matrix", str(grid), "-q"], tmp_path)
    line = proc.stdout.readline()  # "cell 1/3 (...): computed ID in 1.2s": one cell is in the store
    m = re.match(r"cell 1/3 .* in ([\d.]+)s$", line.strip())
    assert m is not None, line
    # two cells remain: a kill within 1.8 cells lands in cell 2, cell 3, or between them
    killed = _kill_after(proc, random.Random(7).uniform(0.0, 1.8) * float(m.group(1)))
    assert killed, "the matrix finished before the kill; kill earlier"
    finished = {r["config_hash"] for r in assert_consistent(runs) if r["attack"] != "matrix"}
    assert finished <= hashes and len(finished) >= 1
    out = run_cli(["matrix", str(grid), "-q"], cwd=tmp_path, timeout=120, cap_mib=RUN_CAP_MIB)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"cells: (\d+) computed, (\d+) reused", out.stdout)
    assert m is not None, out.stdout[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (3 - len(finished), len(finished))
    rows = assert_consistent(runs)
    assert {r["config_hash"] for r in rows if r["attack"] != "matrix"} == hashes
    assert temporaries(runs) == []
