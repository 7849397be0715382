"""Tables twice: markdown for people (unchanged text), CSV for programs (plain numbers); the
run listing on a narrow terminal; ``show --json``; Neural Cleanse's progress bar."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab import progress, report
from poisonlab.cli import main
from poisonlab.report import Column, Table
from poisonlab.run_outputs import summary_table
from poisonlab.store_index import index_run
from poisonlab.subpop import experiment as sub_experiment
from poisonlab.traffic_report import traffic_table
from poisonlab.transfer_run import transfer_table

NAN = float("nan")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def number(cell: str) -> float | None:
    """A CSV cell read back: a float, or None when empty (anything else fails the test)."""
    return None if cell == "" else float(cell)


def same(a: float | None, b: float | None) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def assert_numeric(rows: list[dict[str, str]], text_columns: set[str]) -> None:
    for r in rows:
        for k, v in r.items():
            if k not in text_columns:
                number(v)  # raises on "%", "–", " pt", "(cached)"
                assert not re.search(r"[%–]|pt|cached", v), (k, v)


# -- the abstraction ----------------------------------------------------------------------
def test_columns_format_for_people_and_write_plain_numbers():
    cols = [Column("name"), Column("rate", "pct"), Column("drop", "pt"), Column("n", "int"), Column("s", "f1"),
            Column("d", "f3"), Column("a", "g"), Column("flag", "bool", show=False),
            Column("note", lambda v, row: f"{v:.1f}" + (" (cached)" if row["flag"] else "")),
            Column("shown only", csv=False)]
    t = Table([{"name": "x", "rate": 0.123456, "drop": -0.0125, "n": np.int64(7), "s": 2.25, "d": 1 / 3, "a": 2.0,
                "flag": True, "note": 3.14, "shown only": "y"},
               {"name": "y", "rate": NAN, "drop": None, "n": 0, "s": np.float32(0.5), "d": NAN, "a": 0.5,
                "flag": False, "note": None, "shown only": None}], cols)
    assert report.to_markdown(t, "T").splitlines() == [
        "### T", "",
        "| name | rate | drop | n | s | d | a | note | shown only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| x | 12.35% | -1.25 pt | 7 | 2.2 | 0.333 | 2 | 3.1 (cached) | y |",
        "| y | – | – | 0 | 0.5 | – | 0.5 | – | – |"]
    rows = parse(report.to_csv(t))
    assert list(rows[0]) == ["name", "rate", "drop", "n", "s", "d", "a", "flag", "note"]
    assert rows[0] == {"name": "x", "rate": "0.123456", "drop": "-0.0125", "n": "7", "s": "2.25",
                       "d": repr(1 / 3), "a": "2.0", "flag": "1", "note": "3.14"}
    assert rows[1] == {"name": "y", "rate": "", "drop": "", "n": "0", "s": "0.5", "d": "", "a": "0.5", "flag": "0",
                       "note": ""}
    assert float(rows[0]["d"]) == 1 / 3  # full precision
    with pytest.raises(ValueError, match="unknown format"):
        Column("x", "percent")


def test_plain_rows_render_as_before_and_write_table_writes_both(tmp_path):
    plain = [{"a": "1%", "b": "–"}]
    assert report.to_markdown(plain) == "| a | b |\n|---|---:|\n| 1% | – |\n"
    assert report.to_csv(plain) == "a,b\r\n1%,–\r\n"
    folder = SimpleNamespace(write_text=lambda name, text: (tmp_path / name).parent.mkdir(exist_ok=True)
                             or (tmp_path / name).write_text(text))
    t = report.write_table(folder, "x", [{"k": 1, "v": 0.5}], [Column("k", "int"), Column("v", "pct")], title="X")
    assert isinstance(t, Table) and t[0]["v"] == 0.5
    assert (tmp_path / "tables" / "x.md").read_text() == "### X\n\n| k | v |\n|---|---:|\n| 1 | 50.00% |\n"
    assert parse((tmp_path / "tables" / "x.csv").read_text()) == [{"k": "1", "v": "0.5"}]
    assert report.from_markdown((tmp_path / "tables" / "x.md").read_text()) == [{"k": "1", "v": "50.00%"}]
    assert parse(report.to_csv(Table([], [Column("k")]))) == [] and report.to_csv(Table([], [Column("k")])) == "k\r\n"


# -- each converted table -----------------------------------------------------------------
def test_seed_table():
    base, bad, bd = np.array([0.1, 0.0, 1 / 3]), np.array([0.2, 0.05, NAN]), np.array([NAN, 0.9, 1.0])
    t = report.seed_table(["0", "1", "2"], base, bad, bd)
    assert report.to_markdown(t).splitlines()[2:4] == ["| 0 | 10.00% | 20.00% | – |", "| 1 | 0.00% | 5.00% | 90.00% |"]
    rows = parse(report.to_csv(t))
    assert_numeric(rows, {"class"})
    for i in range(3):
        assert same(number(rows[i]["baseline clean error"]), base[i])
        assert same(number(rows[i]["BadNet clean error"]), bad[i])
        assert same(number(rows[i]["BadNet backdoor error"]), bd[i])
    assert rows[3]["class"] == "average" and float(rows[3]["BadNet backdoor error"]) == 0.95


METRICS = {"baseline": {"clean_accuracy": 0.98125, "clean_error": 0.01875, "attack_success_rate": 0.1,
                        "train_seconds": 3.21, "eval_seconds": 0.5, "from_cache": True},
           "victim": {"clean_accuracy": 0.97, "clean_error": 0.03, "attack_success_rate": 0.99, "backdoor_error": 0.01,
                      "train_seconds": 4.04}, "victim_label": "BadNet"}


def test_summary_table():
    t = summary_table(METRICS)
    assert report.to_markdown(t).splitlines()[2] == "| clean baseline | 98.12% | 1.88% | 10.00% | – | 3.2 (cached) | 0.5 |"
    assert report.to_markdown(t).splitlines()[3] == "| BadNet | 97.00% | 3.00% | 99.00% | 1.00% | 4.0 | – |"
    rows = parse(report.to_csv(t))
    assert_numeric(rows, {"model"})
    for r, key in zip(rows, ("baseline", "victim")):
        m = METRICS[key]
        assert same(number(r["clean accuracy"]), m["clean_accuracy"]) and same(number(r["train s"]), m["train_seconds"])
        assert same(number(r["attack success"]), m["attack_success_rate"])
        assert same(number(r["backdoor error"]), m.get("backdoor_error"))
        assert same(number(r["eval s"]), m.get("eval_seconds"))
        assert int(r["from_cache"]) == bool(m.get("from_cache"))
    old = {**METRICS, "badnet": METRICS["victim"]}  # a run made before the pipeline
    del old["victim"]
    assert summary_table(old) == t


def test_traffic_table_csv():
    base = {"stop": 0.5, "speed limit": 1 / 3, "warning": 1.0, "other": NAN, "average": 0.625}
    clean = {"stop": 1.0, "speed limit": 0.875, "warning": 0.0, "other": 0.5, "average": 0.6}
    t = traffic_table(base, {"bomb": (clean, base)})
    assert report.to_markdown(t).splitlines()[2] == "| stop | 50.00% | 100.00% | 50.00% |"
    rows = parse(report.to_csv(t))
    assert_numeric(rows, {"group"})
    for r in rows:
        g = r["group"]
        assert same(number(r["baseline clean"]), base[g]) and same(number(r["bomb clean"]), clean[g])
        assert same(number(r["bomb backdoor"]), base[g])


def test_transfer_table_csv():
    result = {"classes": ["a", "b"], "students": [
        {"name": "clean teacher", "per_class_clean": [0.5, 2 / 3], "per_class_backdoor": [0.25, NAN],
         "clean_accuracy": 0.6, "backdoor_accuracy": 0.3},
        {"name": "BadNet teacher", "per_class_clean": [1.0, 0.0], "per_class_backdoor": [0.125, 0.75],
         "clean_accuracy": 0.5, "backdoor_accuracy": 0.4}]}
    t = transfer_table(result)
    assert report.to_markdown(t).splitlines()[-1] == "| average (all test images) | 60.00% | 30.00% | 50.00% | 40.00% |"
    rows = parse(report.to_csv(t))
    assert_numeric(rows, {"class"})
    for s in result["students"]:
        for i in range(2):
            assert same(number(rows[i][f"{s['name']}: clean"]), s["per_class_clean"][i])
            assert same(number(rows[i][f"{s['name']}: backdoor"]), s["per_class_backdoor"][i])
        assert float(rows[2][f"{s['name']}: backdoor"]) == s["backdoor_accuracy"]


SUMMARY = [{"alpha": 1.0, "k": 5, "k_used": 5, "n_subpops": 9, "target_worst_k": 0.123456, "collateral_worst_k": 0.01,
            "collateral_all": 1 / 300},
           {"alpha": 2.0, "k": 1, "k_used": 1, "n_subpops": 9, "target_worst_k": 0.5, "collateral_worst_k": -0.02,
            "collateral_all": 0.0}]
ROWS = [{"subpop_id": "a", "description": "color=red", "test_size": 30, "attacker_size": 12, "alpha": 2.0,
         "n_poison": 24, "target": 0.3, "collateral": 0.0125, "subpop_accuracy_before": 0.9,
         "subpop_accuracy_after": 0.6},
        {"subpop_id": "b", "description": "color=blue", "test_size": 20, "attacker_size": 10, "alpha": 2.0,
         "n_poison": 20, "target": 0.5, "collateral": -0.01, "subpop_accuracy_before": 0.8,
         "subpop_accuracy_after": NAN},
        {"subpop_id": "a", "description": "color=red", "test_size": 30, "attacker_size": 12, "alpha": 1.0,
         "n_poison": 12, "target": 0.1, "collateral": 0.0, "subpop_accuracy_before": 0.9,
         "subpop_accuracy_after": 0.8}]
CERTIFIED = {"certified": {"q": 0.1, "lam": 1.0, "rows": 30, "max_r": 2, "curve": [(0, 0.9), (1, 5 / 6), (2, 0.5)]}}


def test_subpop_tables_csv_and_markdown():
    s = sub_experiment.summary_rows(SUMMARY)
    assert report.to_markdown(s).splitlines()[2] == "| 1 | 5 | 0.123 | 1.00% | 0.33% | 9 |"
    rows = parse(report.to_csv(s))
    assert_numeric(rows, set())
    for r, raw in zip(rows, SUMMARY):
        assert float(r["alpha"]) == raw["alpha"] and r["worst k"] == str(raw["k"])
        assert float(r["target damage (worst k)"]) == raw["target_worst_k"]
        assert float(r["collateral (worst k)"]) == raw["collateral_worst_k"]
        assert float(r["collateral (all)"]) == raw["collateral_all"] and int(r["subpopulations"]) == raw["n_subpops"]
    f = sub_experiment.fairness_rows(ROWS)
    assert report.to_markdown(f).splitlines()[2] == "| color=blue | 20 | 2 | 20 | 80.00% | – | 0.500 | -1.00% |"
    rows = parse(report.to_csv(f))
    assert_numeric(rows, {"subpopulation"})
    assert [r["subpopulation"] for r in rows] == ["color=blue", "color=red"]
    for r, raw in zip(rows, (ROWS[1], ROWS[0])):
        assert int(r["test rows"]) == raw["test_size"] and int(r["poisons"]) == raw["n_poison"]
        assert same(number(r["accuracy after"]), raw["subpop_accuracy_after"])
        assert float(r["target damage"]) == raw["target"] and float(r["collateral"]) == raw["collateral"]
    c = parse(report.to_csv(sub_experiment.certified_rows(CERTIFIED)))
    assert_numeric(c, {"defense"})
    assert [(int(r["flips r"]), float(r["certified accuracy"])) for r in c] == CERTIFIED["certified"]["curve"]
    assert int(c[0]["test rows"]) == 30 and float(c[0]["q"]) == 0.1


def test_subpop_write_puts_both_copies_in_the_run_folder(tmp_path):
    folder = SimpleNamespace(write_text=lambda name, text: (tmp_path / name).parent.mkdir(exist_ok=True)
                             or (tmp_path / name).write_text(text), write_json=lambda name, obj: None)
    cfg = SimpleNamespace(name="t", output=SimpleNamespace(save_weights=False, plots=False))
    sub_experiment._write(folder, cfg, {}, {"defenses": [], "certified": CERTIFIED}, ROWS, SUMMARY, None)
    tables = tmp_path / "tables"
    for stem in ("summary", "hardest_hit"):
        assert "### t: " in (tables / f"{stem}.md").read_text()
        assert_numeric(parse((tables / f"{stem}.csv").read_text()), {"subpopulation"})
    assert "| color=red | 30 | 2 | 24 | 90.00% | 60.00% | 0.300 | 1.25% |" in (tables / "hardest_hit.md").read_text()
    assert len(parse((tables / "certified.csv").read_text())) == 3 and not (tables / "certified.md").exists()


# -- a real run: its CSV equals its metrics; show --json; runs -----------------------------
TINY = ["train.epochs=1", "output.plots=false", "output.save_weights=false", "attack={name: badnets, p: 0.1}"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a real tiny step run and indexed runs of every other family (no training)."""
    from poisonlab.config import load_config
    from poisonlab.experiment import run_experiment

    root = tmp_path_factory.mktemp("runs")
    out = run_experiment(load_config(None, TINY + [f"output.dir={root}"], device="cpu"), quiet=True)
    common = {"created": "2024-01-02 03:04:05", "config_hash": "0" * 16, "version": "0", "metrics": {}}
    fakes = [
        ("20240102-030405-old-badnet-run-aaaaaa", "old-badnet-run", "badnets", 3,
         {"baseline_clean_acc": 0.98, "badnet_clean_acc": 0.97, "attack_success": 0.995, "n_poison": 10,
          "seconds": 12.0}),
        ("20240102-030406-adult-featurematch-bbbbbb", "adult-featurematch", "subpopulation (feature-match)", 0,
         {"clean_acc": 0.84, "subpopulations": 9, "worst1_target_alpha1": 0.2, "worst5_target_alpha1": 0.1,
          "worst1_target_alpha2": 0.5, "worst5_target_alpha2": 0.25, "seconds": 30.0}),
        ("20240102-030407-digits-grid-cccccc", "digits-grid", "matrix", None,
         {"cells": 12, "computed": 3, "reused": 9, "seconds": 99.0}),
    ]
    for rid, name, attack, seed, summary in fakes:
        (root / rid).mkdir()
        (root / rid / "metrics.json").write_text(json.dumps({"time": {"total_seconds": 1.0},
                                                             "peak_memory_mb": {"rss": 1.0}, "x": NAN}))
        index_run(root, {**common, "id": rid, "name": name, "dataset": "digits", "model": "m", "attack": attack,
                         "seed": seed, "summary": summary, "path": str(root / rid)})
    return root, out


def test_run_folder_csv_equals_its_metrics(store):
    _, out = store
    m = json.loads((out.path / "metrics.json").read_text())
    seed = parse((out.path / "tables" / "seed_table.csv").read_text())
    assert_numeric(seed, {"class"})
    for i, r in enumerate(seed[:-1]):
        assert same(number(r["baseline clean error"]), m["baseline"]["per_class_clean_error"][i])
        assert same(number(r["BadNet clean error"]), m["victim"]["per_class_clean_error"][i])
        assert same(number(r["BadNet backdoor error"]), m["victim"]["per_class_backdoor_error"][i])
    assert seed[0]["BadNet backdoor error"] == ""  # the target class: no backdoor error
    md = (out.path / "tables" / "seed_table.md").read_text().splitlines()
    e = m["victim"]["per_class_clean_error"][1], m["victim"]["per_class_backdoor_error"][1]
    assert f"| 1 | {100 * m['baseline']['per_class_clean_error'][1]:.2f}% | {100 * e[0]:.2f}% | {100 * e[1]:.2f}% |" in md
    summary = parse((out.path / "tables" / "summary.csv").read_text())
    assert_numeric(summary, {"model"})
    assert float(summary[1]["clean accuracy"]) == m["victim"]["clean_accuracy"]
    assert float(summary[1]["attack success"]) == m["victim"]["attack_success_rate"]
    assert float(summary[0]["train s"]) == m["baseline"]["train_seconds"]
    assert int(summary[0]["from_cache"]) == m["baseline"]["from_cache"]


def test_show_json_is_the_metrics(store, capsys):
    root, out = store
    code, text, err = run_cli(["show", out.run_id[:20], "--dir", str(root), "--json"], capsys)
    assert code in (0, None) and err == ""
    shown = json.loads(text)
    stored = json.loads((out.path / "metrics.json").read_text(), parse_constant=lambda c: None)  # NaN: null
    assert shown["id"] == out.run_id and shown["metrics"] == stored and shown["path"] == str(out.path)
    assert shown["summary"]["victim_clean_acc"] == out.metrics["victim"]["clean_accuracy"]
    fake = "20240102-030407-digits-grid-cccccc"
    code, text, _ = run_cli(["show", str(root / fake), "--json"], capsys)  # by folder; NaN as null (jq reads it)
    shown = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert shown["metrics"]["x"] is None and shown["summary"]["cells"] == 12


def test_show_json_on_a_damaged_run_is_one_line(tmp_path, capsys):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "metrics.json").write_text("{")
    code, text, err = run_cli(["show", str(tmp_path / "r1"), "--json"], capsys)
    assert code == 2 and text == "" and "metrics.json' is corrupt" in err and err.count("\n") == 1


def _runs(capsys, monkeypatch, root, *extra, tty=True, columns=80):
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    code, out, err = run_cli(["runs", "--dir", str(root), *extra], capsys)
    assert code in (0, None), err
    return out


FAKE_IDS = ("20240102-030405-old-badnet-run-aaaaaa", "20240102-030406-adult-featurematch-bbbbbb",
            "20240102-030407-digits-grid-cccccc")


@pytest.mark.parametrize("columns", [80, 100])
def test_runs_fits_a_narrow_terminal(store, capsys, monkeypatch, columns):
    root, out = store
    text = _runs(capsys, monkeypatch, root, columns=columns)
    lines = text.splitlines()
    assert lines and max(len(ln) for ln in lines) <= columns, text
    assert "\x1b" not in text and f"columns hidden to fit {columns} characters; --wide shows all" in text
    header = next(ln for ln in lines if ln.startswith("id "))
    assert header.split() == ["id", "name", "attack", "result"]  # the least important columns went first
    for rid, name, attack in ((out.run_id, "experiment", "badnets"), (FAKE_IDS[0], "old-badnet", "badnets"),
                              (FAKE_IDS[1], "adult", "subpop"), (FAKE_IDS[2], "digits-grid", "matrix")):
        line = next(ln for ln in lines if rid in ln)  # never blank: every cell starts on the id's line
        assert name[:6] in line and attack[:6] in line and len(line.split()) >= 4, line
    for needle in ("100.00%", "99.50%", "0.250", "cells"):
        assert needle in text, needle


def test_runs_of_one_family_keep_their_headline(tmp_path, capsys, monkeypatch):
    rid = "20240102-030405-digits-badnets-abcdef"
    index_run(tmp_path, {"id": rid, "created": "2024-01-02 03:04:05", "name": "digits-badnets", "dataset": "digits",
                         "model": "digits-cnn", "attack": "badnets", "config_hash": "0", "seed": 0, "version": "0",
                         "summary": {"baseline_clean_acc": 0.98, "victim_clean_acc": 0.975, "attack_success": 0.99,
                                     "seconds": 12.0}, "metrics": {}, "path": str(tmp_path / rid)})
    text = _runs(capsys, monkeypatch, tmp_path)
    assert max(len(ln) for ln in text.splitlines()) <= 80, text
    header = next(ln for ln in text.splitlines() if ln.startswith("id ")).split()
    assert header[:4] == ["id", "name", "attack", "success"] and "date" not in header  # the least important dropped
    row = next(ln for ln in text.splitlines() if rid in ln)
    assert row.split()[:4] == [rid, "digits-badnets", "badnets", "99.00%"] and len(row.split()) == len(header)


def test_runs_wide_and_not_a_terminal_show_every_column(store, capsys, monkeypatch):
    root, out = store
    for text in (_runs(capsys, monkeypatch, root, "--wide"), _runs(capsys, monkeypatch, root, tty=False, columns=80),
                 _runs(capsys, monkeypatch, root, columns=300)):
        assert "hidden" not in text
        header = next(ln for ln in text.splitlines() if " id " in ln)
        for h in ("date", "name", "data", "model", "attack", "seed", "baseline acc", "victim acc", "attack success",
                  "result", " s "):
            assert h in header, h
        row = next(ln for ln in text.splitlines() if out.run_id in ln)
        assert f"{100 * out.metrics['victim']['clean_accuracy']:.2f}%" in row and "experiment" in row
        old = next(ln for ln in text.splitlines() if FAKE_IDS[0] in ln)
        assert "97.00%" in old and "98.00%" in old and "99.50%" in old  # older runs: badnet_clean_acc
        sub = next(ln for ln in text.splitlines() if FAKE_IDS[1] in ln)
        assert "84.00%" in sub and "worst-5 damage 0.250 (α 2)" in sub and "subpopulation (feature-match)" in sub
        assert "12 cells, 9 reused" in next(ln for ln in text.splitlines() if FAKE_IDS[2] in ln)


# -- Neural Cleanse's progress bar ---------------------------------------------------------
def test_neural_cleanse_progress_bar(monkeypatch):
    from rich.console import Console

    from poisonlab.defenses.neural_cleanse import neural_cleanse

    seen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=seen, force_terminal=True, width=120))
    progress.set_enabled(True)
    try:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        torch.manual_seed(0)
        found = neural_cleanse(model, torch.rand(8, 1, 4, 4), 3, steps=4, batch_size=4)
    finally:
        progress.set_enabled(None)
    assert found.masks.shape == (3, 4, 4)
    assert "Neural Cleanse" in seen.getvalue() and "12/12" in seen.getvalue()
    progress.set_enabled(False)
    try:
        again = neural_cleanse(model, torch.rand(8, 1, 4, 4), 3, steps=4, batch_size=4)
    finally:
        progress.set_enabled(None)
    assert again.masks.shape == (3, 4, 4)
