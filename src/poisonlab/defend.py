"""Apply the configured defenses to a trained BadNet and measure each one.

Every registered defense (:data:`poisonlab.defenses.DEFENSES`: filters, robust training,
model repair, input detectors) is called the same way, ``spec.run(cfg, inputs)``: the suspect
model, the poisoned training set with its poison mask and ``retrain`` (the victim's own
training), the clean validation split (its only source for decisions, e.g. where pruning
stops) and, for the report only, the clean and triggered test sets. Results form the attack x
defense table of Liu et al. (2018): clean accuracy, attack success, share of channels pruned,
accuracy drop, share of poisons removed, time, memory.
A detector that refuses inputs (STRIP) is measured with its refusals: a rejected clean
input is an error, a rejected triggered input a failed attack; the table shows the shares
rejected (clean = false rejections, triggered = detections).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import report
from .attacks import AttackTestSet
from .data.base import Dataset
from .defenses import (
    DEFENSES,
    DefenseInputs,
    FinePruningConfig,
    check_needs,
    offered_by,
    plot_pruning_curve,
)
from .defenses.filter_defenses import removal_report
from .errors import PoisonlabError
from .resources import peak_rss_mb
from .store import RunFolder

Evaluate = Callable[[nn.Module, str], dict[str, Any]]


@dataclass
class DefenseReport:
    """Per-defense metrics and the rows of the attack x defense table."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, str]] = field(default_factory=list)


def check_defenses(raw: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Validate every ``defenses:`` entry up front (before any training): ``[(label, cfg)]``."""
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "name" not in item:
            raise PoisonlabError(f"defenses[{i}] needs a 'name' (one of {', '.join(DEFENSES.names())})")
        spec = DEFENSES.get(item["name"])
        cfg = spec.from_config(item)
        out.append((getattr(cfg, "label", None) or spec.name, cfg))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise PoisonlabError(f"defenses lists a defense twice ({', '.join(names)}); give each once, or give "
                             f"each variant its own label")
    return out


def defense_inputs(model: nn.Module, val: Dataset | None, test: Dataset | None, attack_set: AttackTestSet | None,
                   seed: int, device: torch.device | str, context: DefenseInputs | None = None) -> DefenseInputs:
    """The :class:`~poisonlab.defenses.registry.DefenseInputs` of one victim: ``context`` (the
    poisoned training set, its poison mask and how to retrain the victim; ``None``: the victim
    cannot be retrained) with the model, the splits, seed and device."""
    base = context if context is not None else DefenseInputs()
    return dataclasses.replace(base, model=model, val=val if val is not None else base.val, test=test,
                               attack_set=attack_set, seed=seed, device=device)


def check_defense_needs(defenses: list[tuple[str, Any]], inputs: DefenseInputs, attack_label: str = "BadNet",
                        retrainable: bool = True) -> None:
    """One-line error naming the first defense whose needs ``inputs`` does not offer (before any runs)."""
    offered = offered_by(inputs)
    if not retrainable:
        offered.has["retrain"] = (f"this experiment gives no way to retrain the {attack_label} (defenses that "
                                  f"filter or retrain apply to the main victim only)")
    for name, cfg in defenses:
        check_needs(DEFENSES.get(getattr(cfg, "name", name)), offered, cfg, name)


def run_defenses(defenses: list[tuple[str, Any]], model: nn.Module, val: Dataset | None, test: Dataset,
                 attack_set: AttackTestSet | None, evaluate: Evaluate, seed: int, device: torch.device,
                 undefended: dict[str, Any], folder: RunFolder | None = None,
                 attack_label: str = "BadNet", context: DefenseInputs | None = None) -> DefenseReport:
    """Run each defense on a copy of ``model``; ``evaluate(model, name)`` measures a defended model.

    Every defense is called the same way, ``spec.run(cfg, inputs)``, with the
    :class:`~poisonlab.defenses.registry.DefenseInputs` of :func:`defense_inputs`; the needs of
    every defense are checked first (:func:`~poisonlab.defenses.registry.check_needs`), so a
    defense the experiment cannot run fails in one line before any defense runs.
    ``attack_label`` names the attacked model in the table's first column; files of a model
    other than the plain BadNet get its label as a suffix. ``context`` (a
    :class:`~poisonlab.defenses.FilterContext`: the poisoned training set, its poison mask and
    ``retrain``) lets filters and robust training remove training rows and retrain.
    """
    result = DefenseReport()
    if not defenses:
        return result
    inputs = defense_inputs(model, val, test, attack_set, seed, device, context)
    check_defense_needs(defenses, inputs, attack_label, retrainable=context is not None)
    suffix = "" if attack_label == "BadNet" else "_" + attack_label.lower().replace(" ", "_").replace("-", "_")
    result.rows.append(_row(attack_label, "none", undefended, undefended, None))
    for name, cfg in defenses:
        start = time.perf_counter()
        spec = DEFENSES.get(getattr(cfg, "name", name))
        outcome = spec.run(cfg, inputs)
        seconds = time.perf_counter() - start
        measured = evaluate(outcome.model, name)
        reported = outcome.summary()
        if outcome.removed is not None and "detection" not in reported:  # any filter gets the detection report
            reported = {**removal_report(np.asarray(outcome.removed, dtype=bool), inputs), **reported}
        entry = {**measured, "defense_seconds": seconds, "peak_rss_mb": peak_rss_mb(), **reported}
        if "clean_accuracy" in measured and "clean_accuracy" in undefended:
            entry["clean_accuracy_drop"] = undefended["clean_accuracy"] - measured["clean_accuracy"]
        if "test_mse" in measured and "test_mse" in undefended:  # regression
            entry["test_mse_change"] = measured["test_mse"] - undefended["test_mse"]
        result.metrics[name] = entry
        # the Fine-Pruning family reports the share pruned (0 for fine-tuning); others prune nothing ("–")
        pruned = outcome.curve.fraction_pruned if outcome.curve else (
            0.0 if isinstance(cfg, FinePruningConfig) else None)
        result.rows.append(_row(attack_label, name, entry, undefended, pruned))
        if folder is not None and outcome.curve is not None:
            outcome.curve.write_csv(folder.file("tables", f"pruning_curve_{name}{suffix}.csv"))
            plot_pruning_curve(folder.file("plots", f"pruning_curve_{name}{suffix}.png"), outcome.curve)
    return result


def _rejected(value: Any, row: dict[str, Any]) -> str:
    return f"{report.pct(row.get('clean rejected'))} / {report.pct(row.get('triggered rejected'))}"


COLUMNS = [report.Column("attack"), report.Column("defense"), report.Column("clean accuracy", "pct"),
           report.Column("attack success", "pct"), report.Column("channels pruned", "pct"),
           report.Column("accuracy drop", "pt"), report.Column("poisons removed", "pct"),
           report.Column("clean target rows removed", "pct"),
           report.Column("inputs rejected (clean / triggered)", _rejected, csv=False),
           report.Column("clean rejected", "pct", show=False), report.Column("triggered rejected", "pct", show=False),
           report.Column("seconds", "f1"), report.Column("peak MiB", "f0")]
"""The attack x defense table: shares as fractions in the CSV, percentages in markdown."""


def defense_table(rows: list[dict[str, Any]]) -> report.Table:
    """Rows of :func:`run_defenses` as a table written twice (markdown for people, numbers in the CSV)."""
    if any(r.get("test MSE") is not None for r in rows):  # regression: the test MSE for the accuracy
        keep = ("attack", "defense", "poisons removed", "seconds", "peak MiB")
        mse = report.Column("test MSE", lambda v, row: f"{v:.4g}")
        return report.Table(rows, [COLUMNS[0], COLUMNS[1], mse, *(c for c in COLUMNS[2:] if c.name in keep)])
    return report.Table(rows, COLUMNS)


def _row(attack: str, name: str, m: dict[str, Any], undefended: dict[str, Any], pruned: float | None) -> dict[str, Any]:
    defended = name != "none"
    rejects = "clean_rejected_rate" in m
    drop = defended and "clean_accuracy" in m and "clean_accuracy" in undefended
    return {"attack": attack, "defense": name, "clean accuracy": m.get("clean_accuracy"),
            "test MSE": m.get("test_mse"),
            "attack success": m.get("attack_success_rate"), "channels pruned": pruned,
            "accuracy drop": undefended["clean_accuracy"] - m["clean_accuracy"] if drop else None,
            "poisons removed": m["detection"]["recall"] if "detection" in m else None,
            "clean target rows removed": m.get("target_class_clean_removed") if "detection" in m else None,
            "inputs rejected (clean / triggered)": True if rejects else None,
            "clean rejected": m.get("clean_rejected_rate"), "triggered rejected": m.get("triggered_rejected_rate"),
            "seconds": m.get("defense_seconds", 0.0) if defended else None, "peak MiB": m.get("peak_rss_mb")}
