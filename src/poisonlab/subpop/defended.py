"""Defenses against subpopulation poisoning, run inside the sweep (Jagielski et al., CCS 2021, Sec. 6):
what is specific to the sweep. The defenses themselves are the registered ones
(:data:`poisonlab.defenses.DEFENSES`), with the same config dataclasses, defaults and code
as against BadNets.

The paper evaluates defenses against its attack and finds that none consistently lowers
target damage without raising collateral. A subpopulation experiment repeats that check: an
optional ``defenses:`` list in the config, each item a registered defense's name or
``{name: ..., label?: str, ...its config keys}`` (:func:`parse_defenses`), e.g. ``trim``,
``{name: sever, rounds: 2}``, ``{name: spectral-signatures, label: ss, rule: validation}``.

In each cell (subpopulation i, alpha j), after D ∪ D_p is built and the undefended victim
trained, every configured defense runs through :func:`poisonlab.defend.run_defenses`, the same
dispatch as against BadNets (:mod:`poisonlab.pipeline.cells`), with the cell's
:class:`~poisonlab.defenses.registry.DefenseInputs`: the undefended victim, D ∪ D_p with its
poison mask (the poison rows), ``retrain`` = the sweep's learner (same mode, same seed) on a
row subset, and the clean validation split. Filters (Spectral Signatures, Activation
Clustering) and robust training (TRIM, SEVER) report the rows they removed; the certified
smoothed ridge (Rosenfeld et al. 2020) and model repair (Fine-Pruning of the MLP's hidden
units) remove none, so their "poisons removed" and "clean rows removed" are NaN.

The sweep's own measurements (:mod:`poisonlab.measures.subpopulation`): target damage and
collateral of each defended model against the *same* clean model A(D) as the undefended
numbers; for a model that certifies (``certified``) also ``certified_accuracy`` (the
subpopulation's test rows right and certified against ``r = n_poison`` flipped labels) and, for
a defense with its own clean reference, ``target_vs_smoothed_clean`` (target damage against the
same smoothed classifier trained on clean D); and, once per experiment, each defense's
``clean_report`` (the certified-accuracy curve on clean D).
**The certificate covers flipped labels of existing rows, while this attack adds rows**, so
``certified_accuracy`` is a reference, not a guarantee against this attack.

**Thresholds are fixed parameters** (the config's values or the registered defaults): no test
row is read to choose them; Fine-Pruning's stop and the ``validation`` rules read the clean
validation split only. Every defense is deterministic given the task's seed, so a parallel
sweep still equals the serial one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..defenses.registry import ConfiguredDefense, parse_defense_item
from ..defenses.robust_defenses import trim_keep_count
from ..errors import PoisonlabError

__all__ = ["METRICS", "ConfiguredDefense", "check_binary", "defense_rows", "defense_summary",
           "parse_defenses", "trim_keep_count"]

METRICS = ("target", "collateral", "clean_accuracy", "poisons_removed", "clean_removed")


def parse_defenses(raw: Any) -> list[ConfiguredDefense]:
    """The ``defenses:`` list, each item validated by its registered config dataclass (one-line
    errors: unknown names and keys with a did-you-mean hint, values out of range, labels used
    twice)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PoisonlabError(f"defenses must be a list of {{name: ..., ...}} mappings, got {raw!r}")
    specs = [parse_defense_item(item, f"defenses[{i}]") for i, item in enumerate(raw)]
    labels = [s.label for s in specs]
    for lab in labels:
        if labels.count(lab) > 1:
            raise PoisonlabError(f"defenses: label {lab!r} is used twice; give each defense a distinct label")
    return specs


def check_binary(d: ConfiguredDefense, num_classes: int) -> None:
    """One-line error when a defense that needs binary labels (``certified``) meets a data set
    of another number of classes (before any training)."""
    if "binary-labels" in d.needs and num_classes != 2:
        raise PoisonlabError(f"defense '{d.label}' needs binary labels (2 classes); this experiment's data have "
                             f"{num_classes} classes: remove it from defenses")


def _nanmean(values: list[float]) -> float:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    return float(v.mean()) if len(v) else math.nan


def defense_summary(rows: list[dict[str, Any]], labels: list[str], k: int = 5) -> list[dict[str, Any]]:
    """One dict per (defense, alpha), "none" (undefended) first: ``target_worst_k`` = mean
    target damage of the k subpopulations worst *without* defense (target descending, ties
    by subpop_id; the same subpopulations for every defense), ``collateral_all``,
    ``clean_accuracy``, ``poisons_removed`` and ``clean_removed`` (means over all
    subpopulations at that alpha, NaN skipped; 0 removed for "none"; NaN for the defenses that
    remove no rows: certified, fine-pruning)."""
    alphas = sorted({r["alpha"] for r in rows})
    at = {a: [r for r in rows if r["alpha"] == a] for a in alphas}
    worst = {a: sorted((r for r in at[a] if not np.isnan(r["target"])),
                       key=lambda r: (-r["target"], str(r["subpop_id"])))[:k] for a in alphas}
    out = []
    for label in ["none", *labels]:
        def col(r: dict[str, Any], m: str, label: str = label) -> float:
            if label != "none":
                return float(r[f"{label}:{m}"])
            return {"target": r["target"], "collateral": r["collateral"],
                    "clean_accuracy": r["clean_accuracy_after"]}.get(m, 0.0)

        for a in alphas:
            out.append({"defense": label, "alpha": a, "k": k, "k_used": len(worst[a]),
                        "worst_subpops": [str(r["subpop_id"]) for r in worst[a]],
                        "target_worst_k": _nanmean([col(r, "target") for r in worst[a]]),
                        "collateral_all": _nanmean([col(r, "collateral") for r in at[a]]),
                        "clean_accuracy": _nanmean([col(r, "clean_accuracy") for r in at[a]]),
                        "poisons_removed": _nanmean([col(r, "poisons_removed") for r in at[a]]),
                        "clean_removed": _nanmean([col(r, "clean_removed") for r in at[a]])})
    return out


def defense_rows(summary: list[dict[str, Any]]) -> Any:
    """:func:`defense_summary` as a table (``tables/defenses.md`` formatted, ``.csv`` plain
    numbers); a share that does not apply (rows removed by a defense that removes none) reads
    ``–`` in markdown and is empty in the CSV."""
    from ..report import Column, Table

    target = f"target damage (worst {summary[0]['k'] if summary else 5} undefended)"
    columns = [Column("defense"), Column("alpha", "g"), Column(target, "f3"), Column("collateral (all)", "pct"),
               Column("clean accuracy", "pct"), Column("poisons removed", "pct"), Column("clean rows removed", "pct")]
    return Table([{"defense": s["defense"], "alpha": s["alpha"], target: s["target_worst_k"],
                   "collateral (all)": float(s["collateral_all"]), "clean accuracy": float(s["clean_accuracy"]),
                   "poisons removed": float(s["poisons_removed"]), "clean rows removed": float(s["clean_removed"])}
                  for s in summary], columns)
