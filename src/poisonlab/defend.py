"""Apply the configured defenses to a trained BadNet and measure each one.

Every defense gets a copy of the suspect model, the clean validation split (its only
source for decisions, e.g. where pruning stops) and, for the report only, the clean and
triggered test sets. Results form the attack x defense table of Liu et al. (2018):
clean accuracy, attack success, share of channels pruned, accuracy drop, time, memory.
A detector that refuses inputs (STRIP) is measured with its refusals: a rejected clean
input is an error, a rejected triggered input a failed attack; the table shows the shares
rejected (clean = false rejections, triggered = detections).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import report
from .attacks import AttackTestSet
from .data.base import Dataset
from .defenses import DEFENSES, plot_pruning_curve
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
    """Validate every ``defenses:`` entry up front (before any training)."""
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


def run_defenses(defenses: list[tuple[str, Any]], model: nn.Module, val: Dataset | None, test: Dataset,
                 attack_set: AttackTestSet | None, evaluate: Evaluate, seed: int, device: torch.device,
                 undefended: dict[str, Any], folder: RunFolder | None = None,
                 attack_label: str = "BadNet", context: Any = None) -> DefenseReport:
    """Run each defense on a copy of ``model``; ``evaluate(model, name)`` measures a defended model.

    ``attack_label`` names the attacked model in the table's first column; files of a
    model other than the plain BadNet get its label as a suffix. ``context`` (a
    :class:`~poisonlab.defenses.filter_defenses.FilterContext`) lets filtering defenses
    remove training rows and retrain.
    """
    result = DefenseReport()
    if not defenses:
        return result
    if val is None or len(val) == 0:
        raise PoisonlabError("defenses decide on a clean validation split; set data.val_fraction > 0")
    suffix = "" if attack_label == "BadNet" else "_" + attack_label.lower().replace(" ", "_").replace("-", "_")
    result.rows.append(_row(attack_label, "none", undefended, undefended, None))
    for name, cfg in defenses:
        start = time.perf_counter()
        spec = DEFENSES.get(getattr(cfg, "name", name))
        if spec.kind == "filter":
            if context is None:
                raise PoisonlabError(f"defense '{name}' filters the training set; it applies to the BadNet only")
            outcome = spec.run(model, cfg, context, seed=seed, device=device)
        else:
            outcome = spec.run(model, cfg, val, test, attack_set, seed=seed, device=device)
        seconds = time.perf_counter() - start
        measured = evaluate(outcome.model, name)
        entry = {**measured, "defense_seconds": seconds, "peak_rss_mb": peak_rss_mb(), **outcome.summary()}
        entry["clean_accuracy_drop"] = undefended["clean_accuracy"] - measured["clean_accuracy"]
        result.metrics[name] = entry
        pruned = outcome.curve.fraction_pruned if outcome.curve else (0.0 if spec.kind == "model" else None)
        result.rows.append(_row(attack_label, name, entry, undefended, pruned))
        if folder is not None and outcome.curve is not None:
            outcome.curve.write_csv(folder.file("tables", f"pruning_curve_{name}{suffix}.csv"))
            plot_pruning_curve(folder.file("plots", f"pruning_curve_{name}{suffix}.png"), outcome.curve)
    return result


def _row(attack: str, name: str, m: dict[str, Any], undefended: dict[str, Any], pruned: float | None) -> dict[str, str]:
    drop = undefended["clean_accuracy"] - m["clean_accuracy"]
    return {"attack": attack, "defense": name, "clean accuracy": report.pct(m["clean_accuracy"]),
            "attack success": report.pct(m.get("attack_success_rate")),
            "channels pruned": "–" if pruned is None else report.pct(pruned),
            "accuracy drop": f"{100 * drop:+.2f} pt" if name != "none" else "–",
            "poisons removed": report.pct(m["detection"]["recall"]) if "detection" in m else "–",
            "clean target rows removed": report.pct(m.get("target_class_clean_removed")) if "detection" in m else "–",
            "inputs rejected (clean / triggered)": f"{report.pct(m['clean_rejected_rate'])} / "
            f"{report.pct(m.get('triggered_rejected_rate'))}" if "clean_rejected_rate" in m else "–",
            "seconds": f"{m.get('defense_seconds', 0.0):.1f}" if name != "none" else "–",
            "peak MiB": f"{m['peak_rss_mb']:.0f}" if "peak_rss_mb" in m else "–"}
