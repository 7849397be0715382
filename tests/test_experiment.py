"""End to end on the embedded digits data: the attack works, runs are reproducible, folders complete."""
import math
from pathlib import Path

import pytest

from poisonlab.config import load_config
from poisonlab.experiment import run_experiment
from poisonlab.store import list_runs

ROOT = Path(__file__).resolve().parents[1]


def test_digits_badnets_example_succeeds(tmp_path):
    """Acceptance: BadNets on digits reaches attack success >= 90% with clean accuracy within 3 points."""
    cfg = load_config(ROOT / "examples" / "digits_badnets.yaml", [f"output.dir={tmp_path}"], device="cpu")
    out = run_experiment(cfg)
    m = out.metrics
    assert m["attack"]["n_poison"] == int(0.1 * m["data"]["train"])
    assert m["victim"]["attack_success_rate"] >= 0.90
    assert m["baseline"]["clean_accuracy"] - m["victim"]["clean_accuracy"] <= 0.03
    assert m["baseline"]["attack_success_rate"] < 0.5  # the clean model ignores the trigger
    folder = out.path
    for rel in ("config.yaml", "metrics.json", "tables/seed_table.csv", "tables/seed_table.md", "tables/summary.md",
                "weights/baseline.safetensors", "weights/victim.safetensors", "plots/trigger_examples.png",
                "plots/first_layer_filters.png", "plots/confusion.png", "plots/training.png"):
        assert (folder / rel).is_file(), rel
    assert m["time"]["total_seconds"] > 0 and m["peak_memory_mb"]["rss"] > 0
    rows = list_runs(tmp_path)
    assert rows[0]["id"] == out.run_id and rows[0]["seed"] == 0 and rows[0]["config_hash"] == m["config_hash"]
    assert out.table[-1]["class"] == "average" and out.table.formatted()[0]["BadNet backdoor error"] == "–"
    assert math.isnan(out.table[0]["BadNet backdoor error"])  # the raw rate: class 0 is the target
    assert out.table[1]["BadNet clean error"] == m["victim"]["per_class_clean_error"][1]


def _stable(metrics):
    drop = {"time", "peak_memory_mb", "eval_seconds", "train_seconds", "train_images_per_second", "from_cache"}
    if isinstance(metrics, dict):
        return {k: _stable(v) for k, v in metrics.items() if k not in drop}
    return metrics


def test_same_seed_same_metrics(tmp_path):
    over = ["train.epochs=2", "output.plots=false", "output.cache_baseline=false",
            "attack={name: badnets, p: 0.1, labels: all-to-all, trigger: {kind: pattern, margin: 0}}"]
    a = run_experiment(load_config(None, over + [f"output.dir={tmp_path / 'a'}"], device="cpu"))
    b = run_experiment(load_config(None, over + [f"output.dir={tmp_path / 'b'}"], device="cpu"))
    assert _stable(a.metrics) == _stable(b.metrics)
    assert a.metrics["victim"]["history"][-1]["loss"] > 0


def test_baseline_cache_is_reused(tmp_path):
    over = ["train.epochs=1", "output.plots=false", f"output.dir={tmp_path}", "attack={name: badnets, p: 0.1}"]
    first = run_experiment(load_config(None, over, device="cpu"))
    second = run_experiment(load_config(None, over + ["attack.p=0.2"], device="cpu"))
    assert not first.metrics["baseline"]["from_cache"] and second.metrics["baseline"]["from_cache"]
    assert first.metrics["baseline"]["clean_accuracy"] == second.metrics["baseline"]["clean_accuracy"]


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    import poisonlab.pipeline.runner as runner

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner, "write_outputs", boom)
    with pytest.raises(RuntimeError):
        run_experiment(load_config(None, ["train.epochs=1", f"output.dir={tmp_path}",
                                          "attack={name: badnets, p: 0.1}"], device="cpu"))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".cache")] == []


def test_damaged_baseline_cache_is_retrained(tmp_path):
    over = ["train.epochs=1", "output.plots=false", f"output.dir={tmp_path}", "attack={name: badnets, p: 0.1}"]
    first = run_experiment(load_config(None, over, device="cpu"))
    for f in (tmp_path / ".cache").glob("*.safetensors"):
        f.write_bytes(b"damaged")
    second = run_experiment(load_config(None, over, device="cpu"))
    assert not second.metrics["baseline"]["from_cache"]
    assert second.metrics["baseline"]["clean_accuracy"] == first.metrics["baseline"]["clean_accuracy"]
