"""Test error against poisoning rate, the figures of Biggio et al. 2012 (Fig. 2), Jagielski et
al. 2018 (Figs. 3-4) and Demontis et al. 2019 (Fig. 4): from a grid's cells, one curve per
attack (its config less ``rate``) and defense, mean and standard deviation over seeds, with the
clean reference's error at rate 0. A regression grid (cells with ``baseline_test_mse``) plots
the test MSE instead (Jagielski et al. 2018), columns ``test_mse_mean`` / ``test_mse_std``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..families.grid_stats import mean_std
from ..families.step_family import is_regression_grid
from ..report import pyplot


def curve_label(section: dict[str, Any]) -> str:
    """An attack's curve name: its ``name`` and every other key but ``rate`` (``label-flip`` or
    ``gradient-poisoning {"surrogate": ...}``)."""
    rest = {k: v for k, v in sorted(section.items()) if k not in ("name", "rate")}
    return str(section.get("name")) + (f" {json.dumps(rest, sort_keys=True, default=str)}" if rest else "")


def error_curves(cells: list[dict[str, Any]], attacks: dict[str, dict[str, Any]],
                 defenses: list[str]) -> list[dict[str, Any]]:
    """Rows (curve, defense, rate, error mean / std, seeds), rate 0 being the clean references
    (a regression grid: the test MSE, ``test_mse_mean`` / ``test_mse_std``)."""
    regression = is_regression_grid(cells)
    metric, col = ("test_mse", "test_mse") if regression else ("clean_error", "test_error")

    def clean_of(c: dict[str, Any]) -> float:
        return c["baseline_test_mse"] if regression else 1 - c["baseline_clean_accuracy"]

    rows: list[dict[str, Any]] = []
    for label in sorted({curve_label(attacks[c["attack"]]) for c in cells}):
        mine = [c for c in cells if curve_label(attacks[c["attack"]]) == label]
        for d in ["none", *defenses]:
            per_seed = {c["seed"]: clean_of(c) for c in mine}  # one clean reference a seed
            clean = mean_std(list(per_seed.values()))
            rows.append({"curve": label, "defense": d, "rate": 0.0, f"{col}_mean": clean[0],
                         f"{col}_std": clean[1], "seeds": len(per_seed)})
            for rate in sorted({float(attacks[c["attack"]].get("rate", math.nan)) for c in mine}):
                at = [c for c in mine if float(attacks[c["attack"]].get("rate", math.nan)) == rate]
                err = mean_std([c["summary"][d][metric] for c in at
                                if c["summary"][d].get(metric) is not None])
                rows.append({"curve": label, "defense": d, "rate": rate, f"{col}_mean": err[0],
                             f"{col}_std": err[1], "seeds": len(at)})
    return rows


def plot_error_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test error (%) against the poisoning rate (%), one line per (attack, defense), ± one std
    (a regression grid's rows: the test MSE, unscaled)."""
    regression = bool(rows) and "test_mse_mean" in rows[0]
    col, scale, ylabel = ("test_mse", 1.0, "test MSE") if regression else ("test_error", 100.0, "test error (%)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in dict.fromkeys((r["curve"], r["defense"]) for r in rows):
        pts = [r for r in rows if (r["curve"], r["defense"]) == key and not math.isnan(r[f"{col}_mean"])]
        x = [100 * r["rate"] for r in pts]
        y = [scale * r[f"{col}_mean"] for r in pts]
        s = [0.0 if r[f"{col}_std"] is None or math.isnan(r[f"{col}_std"]) else scale * r[f"{col}_std"] for r in pts]
        name = key[0] if key[1] == "none" else f"{key[0]} + {key[1]}"
        ax.errorbar(x, y, yerr=s, marker="o", capsize=3, label=name[:60], linestyle="-" if key[1] == "none" else "--")
    ax.set_xlabel("poisons (% of the training set)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
