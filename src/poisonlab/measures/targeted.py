"""The measure of a targeted attack: does each target get the attacker's label, and is the
model still as accurate as a clean one (Shafahi et al. 2018; Geiping et al. 2021, Sec. 5)?

Per victim: clean accuracy on the test set, and per target whether it is classified as the
poison class (``attack_success_rate`` = the share of targets that are). Over several victims
(``victim.seeds``), :meth:`TargetedMeasure.over_victims` gives each target's success share over
the victims and their distribution: ``worst_k`` is the mean of the k targets most often
poisoned (the defender's worst case; k = 1, 5, 10 where there are that many), ``mean`` the
share of all (target, victim) pairs poisoned, with its 95% Wilson interval over those pairs.
A refused input (a detector defense answers ``num_classes``) is not poisoned.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..attacks import AttackTestSet
from ..data.base import Dataset
from ..train import predict
from . import MEASURES
from .backdoor import _rejects, clean_metrics

WORST_K = (1, 5, 10)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial share.

    >>> [round(v, 4) for v in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def success_summary(per_target: list[list[int]]) -> dict[str, Any]:
    """``per_target[v][t]``: 1 when victim ``v`` gives target ``t`` the poison class. The
    per-target shares, worst-k means, the overall mean and its Wilson interval."""
    victims = len(per_target)
    targets = len(per_target[0]) if victims else 0
    shares = [sum(v[t] for v in per_target) / victims for t in range(targets)] if victims else []
    ranked = sorted(shares, reverse=True)
    hits = sum(sum(v) for v in per_target)
    low, high = wilson_interval(hits, victims * targets)
    out: dict[str, Any] = {"victims": victims, "targets": targets, "per_target_share": shares,
                           "mean": hits / (victims * targets) if victims * targets else math.nan,
                           "ci95": [low, high]}
    for k in WORST_K:
        if targets >= k:
            out[f"worst_{k}"] = sum(ranked[:k]) / k
    return out


@MEASURES.register("targeted")
class TargetedMeasure:
    """Clean accuracy and per-target success (see module docstring)."""

    name = "targeted"
    headline = {"clean_accuracy": "clean acc. %", "attack_success_rate": "targets poisoned %"}

    def measure(self, model: nn.Module, test: Dataset, evaluation: AttackTestSet | None, batch_size: int,
                device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        start = time.perf_counter()
        pred_clean = predict(model, test.x, batch_size, device, desc=f"{name} clean test")
        out = clean_metrics(pred_clean, test, _rejects(model))
        preds = {"clean": pred_clean}
        if evaluation is not None and len(evaluation.x):
            pred = predict(model, evaluation.x, batch_size, device, desc=f"{name} targets")
            hit = evaluation.success(pred) & (pred < test.num_classes)
            out.update({"attack_success_rate": float(hit.float().mean()), "target_success": hit.long().tolist(),
                        "target_predictions": pred.tolist()})
            preds["targets"] = pred
        out["eval_seconds"] = time.perf_counter() - start
        return out, preds

    def describe(self, evaluation: AttackTestSet | None) -> dict[str, Any]:
        if evaluation is None:
            return {}
        return {"targets": len(evaluation.x), "target_true_classes": evaluation.true.tolist()}

    def over_victims(self, victims: list[dict[str, Any]]) -> dict[str, Any]:
        """The success distribution over ``victims``' metrics (each with ``target_success``), and
        their clean accuracies."""
        per_target = [list(v["target_success"]) for v in victims if "target_success" in v]
        out = success_summary(per_target)
        out["clean_accuracy"] = [v["clean_accuracy"] for v in victims]
        return out


def over_victims_table(summary: dict[str, Any]) -> Any:
    """One row: victims, targets, mean share poisoned with its 95% interval, worst-k, clean accuracy."""
    from ..report import Column, Table

    low, high = summary["ci95"]
    acc = summary.get("clean_accuracy") or []
    row = {"victims": summary["victims"], "targets": summary["targets"], "poisoned (mean)": summary["mean"],
           "95% interval": f"{100 * low:.1f}–{100 * high:.1f}%" if not math.isnan(low) else None,
           **{f"worst-{k}": summary.get(f"worst_{k}") for k in WORST_K},
           "clean acc. (min)": min(acc) if acc else None, "clean acc. (mean)": sum(acc) / len(acc) if acc else None}
    cols = [Column("victims"), Column("targets"), Column("poisoned (mean)", "pct"), Column("95% interval"),
            *(Column(f"worst-{k}", "pct") for k in WORST_K), Column("clean acc. (min)", "pct"),
            Column("clean acc. (mean)", "pct")]
    return Table([row], cols)
