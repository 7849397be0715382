"""The pure parts of bench/filter_speed.py and bench/scaling.py, and the bench's one-line error."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_removal_quality_and_art_mask_by_hand():
    fs = _load("filter_speed")
    poison = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    remove = fs.art_mask([0, 1, 0, 0, 1, 1, 1, 1])  # ART: 1 = kept
    assert remove.tolist() == [True, False, True, True, False, False, False, False]
    assert fs.removal_quality(remove, poison) == {"recall": 2 / 3, "fpr": 1 / 5}


def test_filter_speed_bad_data_dir_is_one_line(tmp_path, capsys):
    fs = _load("filter_speed")
    assert fs.cli(["--data-dir", str(tmp_path / "missing"), "--json", "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "missing" in err


def test_linear_fit_deviations_by_hand():
    sc = _load("scaling")
    a, b, dev = sc.linear_fit([10, 20, 30, 40], [2.0, 3.0, 5.0, 6.0])
    # least squares by hand: slope 0.14, intercept 0.5; fitted 1.9, 3.3, 4.7, 6.1
    assert a == pytest.approx(0.5) and b == pytest.approx(0.14)
    assert dev == pytest.approx([2 / 1.9 - 1, 3 / 3.3 - 1, 5 / 4.7 - 1, 6 / 6.1 - 1])


def test_eval_memory_bench_compares_logits_across_batch_sizes(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "eval_memory.py"
    out = tmp_path / "mem.json"
    subprocess.run([sys.executable, str(script), "--rows", "40", "--batches", "40", "40", "7", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    rows = json.loads(out.read_text())
    assert [r["batch"] for r in rows] == [40, 40, 7]
    assert rows[1]["same_logits_as_first"]  # a fresh process, the same batches: the same bits
    assert isinstance(rows[2]["same_logits_as_first"], bool)  # may differ in the last bits (kernel blocking)
    assert all(r["peak_growth_mib"] >= 0 for r in rows)


def test_brew_cost_bench_quick_run_writes_its_numbers(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "brew_cost.py"
    out = tmp_path / "brew.json"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], check=True, capture_output=True)
    got = json.loads(out.read_text())
    gm, fc = got["gradient_matching"], got["feature_collision"]
    assert (gm["poisons"], gm["steps"], fc["poisons"], fc["iterations"]) == (12, 3, 4, 5)
    assert gm["seconds_per_poison_image"] == gm["seconds"] / 12 and fc["seconds_per_poison_image"] == fc["seconds"] / 4
    assert got["victim_from_scratch"]["rows"] == 600 and got["victim_last_layer"]["images_per_second"] > 0
    three = got["victim_last_layer_3_epochs"]
    assert three["speedup"] == three["through_frozen_layers_seconds"] / three["cached_features_seconds"]
