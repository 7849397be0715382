"""What a BadNets run writes: its config, tables, metrics.json, weights and plots, and the
summary row of the run index."""
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
from .store import RunFolder, save_weights


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The key numbers of a run (for ``poisonlab runs``)."""
    out = {"baseline_clean_acc": metrics["baseline"]["clean_accuracy"]}
    if "badnet" in metrics:
        out.update({"badnet_clean_acc": metrics["badnet"]["clean_accuracy"],
                    "attack_success": metrics["badnet"].get("attack_success_rate"),
                    "n_poison": metrics["attack"]["n_poison"]})
    if "pruning_aware" in metrics:
        out["pruning_aware_attack_success"] = metrics["pruning_aware"].get("attack_success_rate")
    # the BadNet's defenses sit at the top level of the metrics, the pruning-aware model's under it
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
                  badnet: nn.Module | None, bad_preds: dict[str, torch.Tensor]) -> list[dict[str, str]]:
    """The run folder's config, per-class and summary tables, metrics.json, weights and plots;
    returns the per-class table (Gu et al. 2017, Table 1's shape)."""
    folder.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    classes = test.classes
    nan = np.full(len(classes), np.nan)
    b, a = metrics["baseline"], metrics.get("badnet")
    table = report.seed_table(
        classes, np.array(b["per_class_clean_error"]),
        np.array(a["per_class_clean_error"]) if a else nan,
        np.array(a["per_class_backdoor_error"], dtype=float) if a and "per_class_backdoor_error" in a else nan,
    )
    folder.write_text("tables/seed_table.md", report.to_markdown(table, f"{cfg.name}: per-class error"))
    folder.write_text("tables/seed_table.csv", report.to_csv(table))
    summary = summary_table(metrics)
    folder.write_text("tables/summary.md", report.to_markdown(summary, f"{cfg.name}: summary"))
    folder.write_text("tables/summary.csv", report.to_csv(summary))
    folder.write_json("metrics.json", metrics)
    if cfg.output.save_weights:
        save_weights(baseline, folder.file("weights", "baseline.safetensors"))
        if badnet is not None:
            save_weights(badnet, folder.file("weights", "badnet.safetensors"))
    if cfg.output.plots:
        write_plots(folder, metrics, test, attack_set, baseline, badnet, bad_preds)
    return table


def summary_table(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """One row per model: clean accuracy, attack success, times and poison count."""
    rows = []
    for key, label in (("baseline", "clean baseline"), ("badnet", "BadNet"), ("pruning_aware", "pruning-aware BadNet")):
        m = metrics.get(key)
        if m is None:
            continue
        rows.append({"model": label, "clean accuracy": report.pct(m["clean_accuracy"]),
                     "clean error": report.pct(m["clean_error"]),
                     "attack success": report.pct(m.get("attack_success_rate")),
                     "backdoor error": report.pct(m.get("backdoor_error")),
                     "train s": f"{m['train_seconds']:.1f}" + (" (cached)" if m.get("from_cache") else ""),
                     "eval s": f"{m['eval_seconds']:.1f}"})
    return rows


def write_plots(folder: RunFolder, metrics: dict[str, Any], test: Dataset, attack_set: AttackTestSet | None,
                baseline: nn.Module, badnet: nn.Module | None, bad_preds: dict[str, torch.Tensor]) -> None:
    """Trigger examples, first-layer filters, confusion matrices and training curves."""
    classes = test.classes
    if badnet is not None and attack_set is not None and len(attack_set.x):
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
                                     bad_preds["clean"][clean_idx], bad_preds["triggered"][idx],
                                     untargeted=attack_set.untargeted)
    try:
        filters = {"clean baseline": first_conv(baseline).weight}
        if badnet is not None:
            filters["BadNet"] = first_conv(badnet).weight
        report.plot_first_layer_filters(folder.file("plots", "first_layer_filters.png"), filters)
    except PoisonlabError:  # models without convolutions have no filters to show
        pass
    mats = {"baseline, clean test": np.array(metrics["baseline"]["confusion_clean"])}
    if "badnet" in metrics:
        mats["BadNet, clean test"] = np.array(metrics["badnet"]["confusion_clean"])
        if "confusion_triggered" in metrics["badnet"]:
            mats["BadNet, triggered test"] = np.array(metrics["badnet"]["confusion_triggered"])
    report.plot_confusion(folder.file("plots", "confusion.png"), mats, classes)
    hists = {"baseline": metrics["baseline"]["history"]}
    if "badnet" in metrics:
        hists["BadNet"] = metrics["badnet"]["history"]
    report.plot_training_curves(folder.file("plots", "training.png"), hists)
