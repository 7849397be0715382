"""What a run of a step family writes: its config, tables, metrics.json, weights and plots, and
the summary row of the run index. The main victim's metrics are under ``victim`` (runs made
before the pipeline kept them under ``badnet``: :func:`victim_metrics` reads both)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from . import report
from .attacks import AttackTestSet
from .config import ExperimentConfig
from .data.base import Dataset
from .errors import PoisonlabError
from .models import first_conv
from .models.learners import is_torch
from .store import RunFolder, save_weights


def victim_metrics(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The main victim's metrics of a run (``victim``; ``badnet`` in runs made before the pipeline)."""
    found = metrics.get("victim", metrics.get("badnet"))
    return found if isinstance(found, dict) else None


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The key numbers of a run (for ``poisonlab runs``)."""
    out = {"baseline_clean_acc": metrics["baseline"].get("clean_accuracy")}
    if "test_mse" in metrics["baseline"]:  # regression
        out["baseline_test_mse"] = metrics["baseline"]["test_mse"]
    victim = victim_metrics(metrics)
    if victim is not None:
        if "test_mse" in victim:
            out["victim_test_mse"] = victim["test_mse"]
        out.update({"victim_clean_acc": victim.get("clean_accuracy"),
                    "attack_success": victim.get("attack_success_rate"),
                    "n_poison": metrics["attack"]["n_poison"]})
    if "pruning_aware" in metrics:
        out["pruning_aware_attack_success"] = metrics["pruning_aware"].get("attack_success_rate")
    # the victim's defenses sit at the top level of the metrics, the pruning-aware model's under it
    for defended, prefix in ((metrics, ""), (metrics.get("pruning_aware", {}), "pruning_aware_")):
        for name, d in defended.get("defenses", {}).items():
            out[f"{prefix}{name}_attack_success"] = d.get("attack_success_rate")
    if "transfer" in metrics:
        for s in metrics["transfer"]["students"]:
            out[f"student {s['name']}"] = [round(s["clean_accuracy"], 4), round(s["backdoor_accuracy"], 4)]
    out["seconds"] = metrics["time"]["total_seconds"]
    return out


def write_outputs(folder: RunFolder, cfg: ExperimentConfig, resolved: dict[str, Any], metrics: dict[str, Any],
                  test: Dataset, attack_set: AttackTestSet | None, baseline: nn.Module,
                  victim: nn.Module | None, victim_preds: dict[str, torch.Tensor],
                  others: list[Any] = ()) -> report.Table:
    """The run folder's config, per-class and summary tables, metrics.json, weights and plots;
    returns the per-class table (Gu et al. 2017, Table 1's shape; raw error rates)."""
    folder.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    classes = test.classes
    nan = np.full(len(classes), np.nan)
    b, a = metrics["baseline"], victim_metrics(metrics)
    table = report.Table()
    if "per_class_clean_error" in b:  # a measure with per-class errors (backdoor: Gu et al. 2017, Table 1)
        table = report.seed_table(
            classes, np.array(b["per_class_clean_error"]),
            np.array(a["per_class_clean_error"]) if a else nan,
            np.array(a["per_class_backdoor_error"], dtype=float) if a and "per_class_backdoor_error" in a
            else nan if metrics.get("family", "backdoor") == "backdoor" and not (a and "target_success" in a)
            else None,  # no backdoor column for a family without triggers (targeted, availability)
            victim=metrics.get("victim_label", "BadNet"),
        )
        report.write_table(folder, "seed_table", table, title=f"{cfg.name}: per-class error")
    report.write_table(folder, "summary", summary_table(metrics), title=f"{cfg.name}: summary")
    if "over_victims" in metrics:
        from .measures.targeted import over_victims_table

        report.write_table(folder, "over_victims", over_victims_table(metrics["over_victims"]),
                           title=f"{cfg.name}: targets poisoned over victims")
    folder.write_json("metrics.json", metrics)
    if cfg.output.save_weights and is_torch(baseline):  # estimators have no tensors (and are never pickled)
        save_weights(baseline, folder.file("weights", "baseline.safetensors"))
        if victim is not None:
            save_weights(victim, folder.file("weights", "victim.safetensors"))
        for v in others:  # further victims of optional steps (the pruning-aware BadNet)
            if v.weights:
                save_weights(v.trained.model, folder.file("weights", v.weights))
    if cfg.output.plots:
        write_plots(folder, metrics, test, attack_set, baseline, victim, victim_preds)
    return table


def _train_seconds(seconds: float, row: dict[str, Any]) -> str:
    return f"{seconds:.1f}" + (" (cached)" if row.get("from_cache") else "")


SUMMARY_COLUMNS = (
    report.Column("model"), report.Column("clean accuracy", "pct"), report.Column("clean error", "pct"),
    report.Column("attack success", "pct"), report.Column("backdoor error", "pct"),
    report.Column("train s", _train_seconds), report.Column("eval s", "f1"),
    report.Column("from_cache", "bool", show=False),  # the markdown's "(cached)" note, as 1/0 in the CSV
)


def summary_table(metrics: dict[str, Any]) -> report.Table:
    """One row per model: clean accuracy and error, attack success, backdoor error (fractions),
    training and evaluation seconds, and whether the model came from the baseline cache."""
    rows = []
    victim = metrics.get("victim_label", "BadNet")
    for key, label in (("baseline", "clean baseline"), ("victim", victim), ("pruning_aware", "pruning-aware BadNet")):
        m = victim_metrics(metrics) if key == "victim" else metrics.get(key)
        if m is None:
            continue
        rows.append({"model": label, "clean accuracy": m.get("clean_accuracy"), "clean error": m.get("clean_error"),
                     "test MSE": m.get("test_mse"),
                     "attack success": m.get("attack_success_rate"), "backdoor error": m.get("backdoor_error"),
                     "train s": m["train_seconds"], "eval s": m.get("eval_seconds"),
                     "from_cache": bool(m.get("from_cache"))})
    if any(r["test MSE"] is not None for r in rows):  # regression: MSE in place of accuracy and error
        mse = report.Column("test MSE", lambda v, row: f"{v:.4g}")
        return report.Table(rows, [SUMMARY_COLUMNS[0], mse, *SUMMARY_COLUMNS[5:]])
    return report.Table(rows, SUMMARY_COLUMNS)


def write_plots(folder: RunFolder, metrics: dict[str, Any], test: Dataset, attack_set: AttackTestSet | None,
                baseline: nn.Module, victim: nn.Module | None, victim_preds: dict[str, torch.Tensor]) -> None:
    """Trigger examples, first-layer filters, confusion matrices and training curves."""
    classes = test.classes
    if victim is not None and attack_set is not None and len(attack_set.x) and "triggered" in victim_preds:
        # one example per attacked class where possible, at most 10
        picks: list[int] = []
        for c in range(test.num_classes):
            hits = (attack_set.true == c).nonzero().flatten()
            if len(hits):
                picks.append(int(hits[0]))
        picks = picks[:10]
        idx = torch.tensor(picks)
        clean_idx = attack_set.rows[idx]
        report.plot_trigger_examples(folder.file("plots", "trigger_examples.png"), test.x[clean_idx],
                                     attack_set.x[idx], classes, attack_set.true[idx], attack_set.target[idx],
                                     victim_preds["clean"][clean_idx], victim_preds["triggered"][idx],
                                     untargeted=attack_set.untargeted)
    try:
        filters = {"clean baseline": first_conv(baseline).weight}
        if victim is not None:
            filters["BadNet"] = first_conv(victim).weight
        report.plot_first_layer_filters(folder.file("plots", "first_layer_filters.png"), filters)
    except PoisonlabError:  # models without convolutions have no filters to show
        pass
    if "confusion_clean" not in metrics["baseline"]:
        return  # a measure without confusion matrices and per-epoch plots of its own
    mats = {"baseline, clean test": np.array(metrics["baseline"]["confusion_clean"])}
    vm = victim_metrics(metrics)
    if vm is not None:
        mats["BadNet, clean test"] = np.array(vm["confusion_clean"])
        if "confusion_triggered" in vm:
            mats["BadNet, triggered test"] = np.array(vm["confusion_triggered"])
    report.plot_confusion(folder.file("plots", "confusion.png"), mats, classes)
    hists = {"baseline": metrics["baseline"]["history"]}
    if vm is not None:
        hists["BadNet"] = vm["history"]
    report.plot_training_curves(folder.file("plots", "training.png"), hists)
