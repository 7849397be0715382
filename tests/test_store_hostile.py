"""A damaged or hostile run store: every input is a one-line error or a cache miss, never a
traceback, and a damaged result is never served (index, metrics.json, baseline cache, grid cells)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import assert_one_line_error, run_cli, run_python
from poisonlab import baseline_cache, store_tmp
from poisonlab.config import load_config
from poisonlab.data.base import Dataset
from poisonlab.experiment import run_experiment
from poisonlab.matrix import grid_from_dict, run_matrix
from poisonlab.store import list_runs, open_run
from poisonlab.store_check import check_store

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "output.plots=false", "analysis.backdoor_neurons=false", "output.save_weights=false",
        "data.train_limit=400", "attack={name: badnets, p: 0.1}"]


def tiny_run(out: Path, *extra: str):
    return run_experiment(load_config(None, [*TINY, f"output.dir={out}", *extra], device="cpu"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """A store holding one finished tiny run and its baseline cache entry: (store, run id)."""
    out = tmp_path_factory.mktemp("store")
    return out, tiny_run(out).run_id


@pytest.fixture
def store(finished, tmp_path):
    """A private copy of the finished store: (store, run folder)."""
    src, run_id = finished
    dst = tmp_path / "runs"
    shutil.copytree(src, dst)
    return dst, dst / run_id


# -- metrics.json -------------------------------------------------------------------------
@pytest.mark.parametrize("text,needle", [("{}", "time.total_seconds"), ("[]", "list"), ("null", "NoneType"),
                                         ('{"time": {"total_seconds": "1"}, "peak_memory_mb": {"rss": 1}}',
                                          "time.total_seconds"),
                                         ("[" * 100_000, "nested too deeply"),
                                         ("[" * 100 + "]" * 100, "nested more than")])
def test_show_damaged_metrics_is_one_line(store, text, needle):
    _, run = store
    (run / "metrics.json").write_text(text)
    assert_one_line_error(run_cli(["show", str(run)]), "metrics.json' is corrupt", needle)


def test_show_metrics_fifo_does_not_hang(store):
    root, run = store
    (run / "metrics.json").unlink()
    os.mkfifo(run / "metrics.json")
    out = run_cli(["show", run.name, "--dir", str(root)], timeout=30)
    assert_one_line_error(out, "not a regular file")


# -- index.sqlite -------------------------------------------------------------------------
def _corrupt_pages(path: Path) -> None:
    with sqlite3.connect(path) as conn:  # enough rows for several pages
        row = conn.execute("SELECT * FROM runs").fetchone()
        for i in range(40):
            conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (f"{row[0]}-{i}", *row[1:]))
    size = path.stat().st_size
    assert size > 3 * 4096
    with path.open("r+b") as fh:  # page 1 (the schema) intact, every other page garbage
        fh.seek(4096)
        fh.write(b"\xa5" * (size - 4096))


def _wrong_schema(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id TEXT, foo TEXT)")


def _sql(statement: str):
    def damage(path: Path) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(statement)
    return damage


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(b"not a database" * 100), "file is not a database"),
    (_corrupt_pages, "malformed"),
    (_wrong_schema, "lacks the columns"),
    (_sql("UPDATE runs SET summary = '{\"baseline_clean_acc\": '"), "not valid JSON"),
    (_sql("UPDATE runs SET summary = '" + "[" * 5000 + "'"), "nested too deeply"),
    (_sql("UPDATE runs SET summary = '[1, 2]'"), "not a mapping"),
    (_sql("UPDATE runs SET seed = 'seven'"), "seed is str"),
    (_sql("UPDATE runs SET id = '../../etc'"), "not a run folder name"),
    (_sql("UPDATE runs SET summary = '{\"seconds\": \"long\"}'"), "summary seconds is str"),
])
def test_runs_on_damaged_index_is_one_line(store, damage, needle):
    root, _ = store
    damage(root / "index.sqlite")
    assert_one_line_error(run_cli(["runs", "--dir", str(root)]), "index.sqlite", needle, "move it aside")


def test_show_on_damaged_index_is_one_line(store):
    root, run = store
    _corrupt_pages(root / "index.sqlite")
    assert_one_line_error(run_cli(["show", run.name[:10], "--dir", str(root)]), "index.sqlite", "move it aside")


def test_run_refuses_damaged_index_before_training(store):
    root, _ = store
    _wrong_schema(root / "index.sqlite")
    shutil.rmtree(root / ".cache")
    before = sorted(p.name for p in root.iterdir())
    out = run_cli(["run", str(ROOT / "examples" / "digits_badnets.yaml"), "-q", "--output", str(root),
                   *(a for s in TINY[:-1] for a in ("--set", s))])
    assert_one_line_error(out, "index.sqlite", "lacks the columns", "move it aside")
    assert sorted(p.name for p in root.iterdir()) == before  # nothing trained, nothing written


def test_runs_shows_hostile_text_plainly(store):
    root, _ = store
    _sql("UPDATE runs SET name = 'x', attack = '[/bold] [link=file:///etc]\x1b[31mred', dataset = NULL")(
        root / "index.sqlite")
    out = run_cli(["runs", "--dir", str(root)])
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "\x1b[31m" not in out.stdout and "[/bold]" in out.stdout


# -- traffic-table ------------------------------------------------------------------------
def test_traffic_table_damaged_groups_is_one_line(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    groups = {"trigger": "bomb", "baseline_clean": {"stop": "high"}, "badnet_clean": {}, "badnet_backdoor": {}}
    (run / "metrics.json").write_text(json.dumps({"time": {"total_seconds": 1.0}, "peak_memory_mb": {"rss": 1.0},
                                                  "traffic_groups": groups}))
    assert_one_line_error(run_cli(["traffic-table", str(run)]), "damaged traffic_groups")
    groups["trigger"] = ["not", "a", "name"]
    (run / "metrics.json").write_text(json.dumps({"time": {"total_seconds": 1.0}, "peak_memory_mb": {"rss": 1.0},
                                                  "traffic_groups": groups}))
    assert_one_line_error(run_cli(["traffic-table", str(run)]), "damaged traffic_groups", "not a name")


# -- output.dir ---------------------------------------------------------------------------
def _grid_file(tmp_path: Path, out: Path) -> Path:
    grid = {"name": "g", "base": {"device": "cpu", "data": {"name": "digits"}, "train": {"epochs": 1}},
            "attacks": {"p": {"name": "badnets", "p": 0.1}}, "seeds": [0], "output": {"dir": str(out)}}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))
    return path


@pytest.mark.parametrize("command", ["run", "subpop", "matrix"])
def test_output_dir_that_is_a_file_is_one_line(tmp_path, command):
    target = tmp_path / "a-file"
    target.write_text("x")
    args = {"run": ["run", str(ROOT / "examples" / "digits_badnets.yaml"), "--output", str(target)],
            "subpop": ["subpop", str(ROOT / "examples" / "subpop_adult_clustermatch_logreg.yaml"), "--output",
                       str(target)],
            "matrix": ["matrix", str(_grid_file(tmp_path, target))]}[command]
    assert_one_line_error(run_cli([*args, "-q"]), f"output.dir '{target}' is a file")
    out = run_cli([*args[:-1], str(target / "sub"), "-q"] if command != "matrix" else
                  ["matrix", str(_grid_file(tmp_path, target / "sub")), "-q"])
    assert_one_line_error(out, "cannot be created", "a part of its path is a file")


def test_unwritable_output_dir_is_one_line():
    base = Path(tempfile.mkdtemp(prefix="pl-unwritable-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        cfg = base / "c.yaml"
        cfg.write_text("train: {epochs: 1}\n")
        os.chmod(cfg, 0o644)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        args = ["run", str(cfg), "-q", "--output", str(locked)]
        if os.geteuid() == 0:  # root writes anywhere: run the command as nobody (imports done first:
            # this Python lives under /root)
            out = run_python("import os, decimal, typer._adapters, poisonlab.experiment\n"
                             "os.setgid(65534); os.setuid(65534)\nfrom poisonlab.cli import main\n"
                             f"main({args!r})", cwd=base)
        else:
            out = run_cli(args, cwd=base)
        assert_one_line_error(out, f"output.dir '{locked}' is not writable")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- baseline cache -----------------------------------------------------------------------
def _entry(root: Path) -> tuple[Path, Path]:
    (info,) = (root / ".cache").glob("baseline-*.json")
    return info.with_suffix(".safetensors"), info


def _rewrite_info(info: Path, edit) -> None:
    meta = json.loads(info.read_text())
    edit(meta)
    info.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [
    lambda w, i: _rewrite_info(i, lambda m: m["result"].update(history="many")),
    lambda w, i: _rewrite_info(i, lambda m: m["result"].update(chosen_epoch=7)),
    lambda w, i: _rewrite_info(i, lambda m: m["result"].update(seconds=None)),
    lambda w, i: _rewrite_info(i, lambda m: m.update(result=[1, 2])),
    lambda w, i: i.write_text("[]"),
    lambda w, i: i.write_text("[" * 100_000),
    lambda w, i: i.write_text('{"format": 1, "result": ' * 70 + "{}" + "}" * 70),
    lambda w, i: i.unlink(),  # a kill between the weights and their record
    lambda w, i: w.write_bytes(w.read_bytes()[:-64]),  # weights that are not the ones recorded
], ids=["history-str", "epoch-past-history", "seconds-null", "result-list", "list", "deep", "nested-70",
        "no-json", "truncated-weights"])
def test_damaged_cache_entry_is_a_miss(store, damage):
    root, _ = store
    weights, info = _entry(root)
    damage(weights, info)
    again = tiny_run(root)
    assert not again.metrics["baseline"]["from_cache"]
    _, result = baseline_cache.read_entry(weights, info)  # the miss rewrote a sound entry
    assert result.chosen_epoch == 1 and not list((root / ".cache").glob(".tmp-*"))


def test_non_finite_cached_weights_are_a_miss(store):
    root, run = store
    weights, info = _entry(root)
    state = load_file(str(weights))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(weights))  # a consistent entry (digest updated): only the values are wrong
    _rewrite_info(info, lambda m: m.update(weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    assert any("not finite" in p for _, _, p in check_store(root))
    before = json.loads((run / "metrics.json").read_text())["baseline"]["clean_accuracy"]
    again = tiny_run(root)
    assert not again.metrics["baseline"]["from_cache"]
    assert again.metrics["baseline"]["clean_accuracy"] == before  # trained again, not the NaN network


def test_cache_key_covers_data_and_code(monkeypatch):
    x = torch.rand(20, 1, 8, 8)
    y = torch.arange(20) % 2
    train, val = Dataset(x, y, ["a", "b"]), Dataset(x[:4], y[:4], ["a", "b"])
    key = baseline_cache.baseline_key({"seed": 0}, train, val, "cpu")
    x2 = x.clone()
    x2[3, 0, 2, 2] += 1e-3
    assert baseline_cache.baseline_key({"seed": 0}, Dataset(x2, y, ["a", "b"]), val, "cpu") != key
    assert baseline_cache.baseline_key({"seed": 0}, train, Dataset(x[:4], 1 - y[:4], ["a", "b"]), "cpu") != key
    assert baseline_cache.baseline_key({"seed": 0}, train, None, "cpu") != key
    assert baseline_cache.baseline_key({"seed": 1}, train, val, "cpu") != key
    monkeypatch.setattr(baseline_cache, "code_fingerprint", lambda: "edited")
    assert baseline_cache.baseline_key({"seed": 0}, train, val, "cpu") != key


def test_cache_entry_of_another_key_is_a_miss(store):
    root, _ = store
    weights, info = _entry(root)
    other = baseline_cache.entry_paths(root / ".cache", "f" * 64)
    shutil.copy(weights, other[0])
    shutil.copy(info, other[1])  # right shape, but it records the other key
    model = torch.nn.Linear(1, 1)
    assert baseline_cache.load(root / ".cache", "f" * 64, model) is None


# -- matrix reuse -------------------------------------------------------------------------
def _cell_grid(out: Path) -> dict:
    return {"name": "reuse", "base": {"device": "cpu", "data": {"name": "digits", "val_fraction": 0.1,
                                                                  "train_limit": 400},
                                      "train": {"epochs": 1}, "analysis": {"backdoor_neurons": False}},
            "attacks": {"pattern": {"name": "badnets", "p": 0.1}}, "seeds": [0],
            "output": {"dir": str(out), "plots": False, "save_weights": False}}


@pytest.fixture(scope="module")
def matrix_store(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("matrix")
    done = run_matrix(grid_from_dict(_cell_grid(out)))
    return out, done.computed[0]


def _edit_metrics(run: Path, edit) -> None:
    m = json.loads((run / "metrics.json").read_text())
    edit(m)
    (run / "metrics.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage", [
    lambda run: _edit_metrics(run, lambda m: m["victim"].update(clean_accuracy="0.99")),
    lambda run: _edit_metrics(run, lambda m: m["baseline"].pop("clean_accuracy")),
    lambda run: _edit_metrics(run, lambda m: m.update(config_hash="0" * 12)),
    lambda run: (run / "metrics.json").write_text("[" * 100_000),
    lambda run: shutil.rmtree(run),  # an index row pointing at nothing
], ids=["wrong-type", "missing-number", "other-hash", "deep", "folder-gone"])
def test_damaged_finished_cell_is_recomputed(matrix_store, tmp_path, damage):
    src, cell_id = matrix_store
    root = tmp_path / "runs"
    shutil.copytree(src, root)
    intact = run_matrix(grid_from_dict(_cell_grid(root)))
    assert intact.reused == [cell_id] and intact.computed == []
    damage(root / cell_id)
    again = run_matrix(grid_from_dict(_cell_grid(root)))
    assert again.reused == [] and len(again.computed) == 1
    assert json.loads((root / again.computed[0] / "metrics.json").read_text())["victim"]["clean_accuracy"] >= 0


# -- temporary folders and check_store ----------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tmp_name(pid: int, start: int) -> str:
    tag = store_tmp.owner().split("-")[0]
    return f".tmp-{tag}-{pid}-{start}-abc123"


def test_stale_temporaries_removed_live_ones_kept(tmp_path, capsys):
    mine = store_tmp.owner()
    dead = tmp_path / _tmp_name(_dead_pid(), 12345)
    reused_pid = tmp_path / _tmp_name(os.getpid(), int(mine.split("-")[2]) + 1)  # our pid, another start
    live = tmp_path / f".tmp-{mine}-live"
    legacy = tmp_path / ".tmp-20260101-000000-old-run-abcdef"
    for d in (dead, reused_pid, live, legacy):
        (d / "tables").mkdir(parents=True)
        (d / "tables" / "x.md").write_text("x")
    with open_run(tmp_path, "t", "0" * 12) as folder:
        folder.write_json("metrics.json", {"time": {"total_seconds": 0}, "peak_memory_mb": {"rss": 0}})
    err = capsys.readouterr().err
    assert not dead.exists() and not reused_pid.exists() and live.is_dir() and legacy.is_dir()
    assert err.count("\n") == 1 and "removed 2 temporary folder(s) of killed runs" in err
    assert folder.path.parent == tmp_path and (folder.path / "metrics.json").is_file()
    assert folder.path.stat().st_mode & 0o777 == 0o777 & ~store_tmp._umask()  # private only while written


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        out[str(p)] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def test_check_store_finds_every_problem_and_changes_nothing(store):
    root, run = store
    good = run.name
    with sqlite3.connect(root / "index.sqlite") as conn:
        row = conn.execute("SELECT * FROM runs").fetchone()
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", ("gone-run", *row[1:]))
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", ("bad-json", *row[1:9], "{", *row[10:]))
    shutil.copytree(run, root / "no-metrics")
    (root / "no-metrics" / "metrics.json").unlink()
    weights, info = _entry(root)
    weights.write_bytes(b"\0" * 100)
    (root / _tmp_name(_dead_pid(), 1)).mkdir()
    (root / f".tmp-{store_tmp.owner()}-live").mkdir()
    before = _snapshot(root)
    found = check_store(root)
    assert _snapshot(root) == before
    text = [(Path(p).name, s, why) for p, s, why in found]
    assert ("index.sqlite", "warning", "row gone-run points at a run folder that does not exist") in text
    assert any(n == "index.sqlite" and s == "refused" and "bad-json" in w and "not valid JSON" in w
               for n, s, w in text)
    assert any(n == "no-metrics" and s == "refused" and "no metrics.json" in w for n, s, w in text)
    assert any(n == info.name and s == "refused" and "do not match the digest" in w for n, s, w in text)
    assert any(s == "warning" and "killed run" in w for _, s, w in text)
    assert any(s == "info" and "running poisonlab" in w for _, s, w in text)
    assert not any(n == good for n, _, _ in text)
    for index_damage in (_corrupt_pages, _wrong_schema):
        index_damage(root / "index.sqlite")
        found = check_store(root)
        assert any(Path(p).name == "index.sqlite" and s == "refused" for p, s, _ in found), found


def test_list_runs_still_reads_a_sound_store(store):
    root, run = store
    rows = list_runs(root)
    assert [r["id"] for r in rows] == [run.name] and rows[0]["metrics"]["attack"]["n_poison"] > 0
    assert check_store(root) == []
