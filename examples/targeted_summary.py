"""Summarise a targeted grid (``poisonlab matrix`` of the ``targeted`` family) over its cells.

Reads the newest grid run named ``--grid`` in a run store and every cell run it lists, then per
attack (an "arm": a brew recipe, its noise control, a target selection) prints, as markdown:

* brews (cells) and (target, victim) pairs, the share of pairs whose target got the poison
  class, with its 95% Wilson interval;
* worst-1 / worst-5 / worst-10 over *targets* (the mean success share over victims of the k
  targets most often poisoned) and over *brews* (the k brews with the highest share of their
  targets poisoned: Jagielski et al. 2021, Table 10's shape);
* victims' clean accuracy (mean, min) against the clean references' (mean), poison images
  per brew, the largest perturbation, time and peak memory per cell;
* with defenses, per (attack, defense): targets poisoned without and with the defense (the
  main victim retrained on what the filter kept), targets saved, poisons and clean rows removed.

    python examples/targeted_summary.py runs --grid matrix-mnist-gradient-matching [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

try:
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from poisonlab.errors import PoisonlabError  # noqa: E402
from poisonlab.measures.targeted import WORST_K, wilson_interval  # noqa: E402


def newest_grid(store: Path, name: str) -> dict[str, Any]:
    """The metrics of the newest grid run called ``name`` in ``store``."""
    found = []
    for f in sorted(store.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        if m.get("name") == name and "cells" in m:
            found.append(m)
    if not found:
        raise PoisonlabError(f"no grid run named '{name}' in {store}; run poisonlab matrix first or fix --grid")
    return found[-1]


def worst(shares: list[float], k: int) -> float | None:
    ranked = sorted(shares, reverse=True)
    return sum(ranked[:k]) / k if len(ranked) >= k else None


def arm_row(attack: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one attack's cells (see module docstring)."""
    target_shares, brew_shares, hits, pairs, acc, base_acc = [], [], 0, 0, [], []
    for m in runs:
        over = m["over_victims"]
        target_shares += over["per_target_share"]
        brew_shares.append(over["mean"])
        hits += round(over["mean"] * over["victims"] * over["targets"])
        pairs += over["victims"] * over["targets"]
        acc += over["clean_accuracy"]
        base_acc.append(m["baseline"]["clean_accuracy"])
    low, high = wilson_interval(hits, pairs)
    row: dict[str, Any] = {"attack": attack, "brews": len(runs), "pairs": pairs, "poisoned": hits / pairs if pairs else None,
                           "ci95": [low, high]}
    for k in WORST_K:
        row[f"targets_worst_{k}"] = worst(target_shares, k)
        row[f"brews_worst_{k}"] = worst(brew_shares, k)
    row.update({"victim_clean_acc_mean": sum(acc) / len(acc), "victim_clean_acc_min": min(acc),
                "reference_clean_acc_mean": sum(base_acc) / len(base_acc),
                "poison_images": runs[0]["attack"].get("n_poison"),
                "linf_max_255": 255 * max(m["attack"].get("perturbation_linf_max", 0.0) for m in runs),
                "seconds_per_cell": sum(m["time"]["total_seconds"] for m in runs) / len(runs),
                "peak_rss_mib_max": max(m["peak_memory_mb"]["rss"] for m in runs)})
    return row


def defense_rows(attack: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per defense of the cells (the main victim retrained on what the filter kept): targets
    poisoned before and after, targets saved (poisoned before, not after), the share of the
    poisons removed (recall) and of the clean rows removed (false-positive rate), clean accuracy."""
    names = [d for d in (runs[0].get("defenses") or {})]
    out = []
    for d in names:
        before = after = saved = 0
        recall, fpr, acc = [], [], []
        for m in runs:
            v, dm = m["victim"].get("target_success", []), m["defenses"][d]
            a = dm.get("target_success", [])
            before += sum(v)
            after += sum(a)
            saved += sum(1 for x, y in zip(v, a) if x and not y)
            det = dm.get("detection") or {}
            if "recall" in det:
                recall.append(det["recall"])
                fpr.append(det["fpr"])
            acc.append(dm.get("clean_accuracy"))
        targets = sum(len(m["victim"].get("target_success", [])) for m in runs)
        out.append({"attack": attack, "defense": d, "targets": targets, "poisoned_before": before,
                    "poisoned_after": after, "saved": saved,
                    "poisons_removed": sum(recall) / len(recall) if recall else None,
                    "clean_removed": sum(fpr) / len(fpr) if fpr else None,
                    "clean_acc_after": sum(a for a in acc if a is not None) / max(1, sum(a is not None for a in acc))})
    return out


def defense_markdown(rows: list[dict[str, Any]]) -> str:
    head = ["attack", "defense", "targets", "poisoned (no defense)", "poisoned (defended)", "targets saved",
            "poisons removed", "clean rows removed", "clean acc. (defended)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["attack"], r["defense"], str(r["targets"]), str(r["poisoned_before"]),
                                        str(r["poisoned_after"]), str(r["saved"]), pct(r["poisons_removed"]),
                                        pct(r["clean_removed"]), pct(r["clean_acc_after"])]) + " |")
    return "\n".join(lines)


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["attack", "brews", "pairs", "poisoned", "95% interval", *(f"worst-{k} targets" for k in WORST_K),
            *(f"worst-{k} brews" for k in WORST_K), "victim clean acc. (mean / min)", "reference clean acc.",
            "poisons / brew", "max l-inf", "s / cell", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["attack"], str(r["brews"]), str(r["pairs"]), pct(r["poisoned"]),
                 f"{pct(r['ci95'][0])}–{pct(r['ci95'][1])}", *(pct(r[f"targets_worst_{k}"]) for k in WORST_K),
                 *(pct(r[f"brews_worst_{k}"]) for k in WORST_K),
                 f"{pct(r['victim_clean_acc_mean'])} / {pct(r['victim_clean_acc_min'])}",
                 pct(r["reference_clean_acc_mean"]), str(r["poison_images"]), f"{r['linf_max_255']:.1f}/255",
                 f"{r['seconds_per_cell']:.0f}", f"{r['peak_rss_mib_max']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path, help="the run store (output.dir of the grid)")
    ap.add_argument("--grid", required=True, help="the grid's name")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    try:
        grid = newest_grid(a.store, a.grid)
        by_attack: dict[str, list[dict[str, Any]]] = {}
        for cell in grid["cells"]:
            path = a.store / cell["run_id"] / "metrics.json"
            if not path.is_file():
                raise PoisonlabError(f"cell run {cell['run_id']} is missing from {a.store}; run the grid again")
            by_attack.setdefault(cell["attack"], []).append(json.loads(path.read_text()))
        rows = [arm_row(k, v) for k, v in by_attack.items()]
        defended = [r for k, v in by_attack.items() for r in defense_rows(k, v)]
    except PoisonlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if defended:  # the main victim of each cell, retrained on what each filter kept
        print("\n" + defense_markdown(defended))
    if a.json:
        a.json.write_text(json.dumps({"arms": rows, "defenses": defended}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
