"""Families that run through the step pipeline (:mod:`poisonlab.pipeline`): an attack from
:data:`~poisonlab.attacks.ATTACKS` that declares the family, and the family's measure
(:data:`~poisonlab.measures.MEASURES`). ``backdoor`` (BadNets, Gu et al. 2017, and blended
triggers) is the first; a new one is ``FAMILIES.register(name)(StepFamily(name, measure))``.

In a grid, a cell is one (attack, seed) experiment whose ``defenses:`` list holds every
defense of the grid (the defenses of one attacked model share its training). The table: per
attack and defense, the mean ± std over seeds of the measure's headline metrics.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..config import ExperimentConfig, OutputConfig, from_dict
from ..errors import PoisonlabError
from ..measures import MEASURES
from ..store_json import is_number
from . import DEFAULT, FAMILIES
from .grid_stats import mean_std, pm, stats

NOT_IN_BASE = {
    "attack": "list attacks under the grid's attacks: mapping",
    "defenses": "list defenses under the grid's defenses: list",
    "seed": "list seeds under the grid's seeds: list",
    "name": "name the grid with its top-level name:",
    "output": "set output under the grid's top-level output:",
}


class StepFamily:
    """A family run by the step pipeline, measured by ``measure`` (a :data:`MEASURES` name)."""

    config_class = ExperimentConfig
    base_help = "an experiment config mapping (data:, model:, train:, ...)"
    attack_example = "badnets-pattern: {name: badnets, p: 0.1}"
    not_in_base = NOT_IN_BASE
    selection = "defense hyperparameters and thresholds are decided on the clean validation split only"
    notes: list[str] = []

    def __init__(self, name: str, measure: str, victim_label: str = "victim") -> None:
        self.name = name
        self.measure = MEASURES.get(measure)()
        self.victim_label = victim_label

    # -- one experiment -------------------------------------------------------------
    def check_attack(self, attack: Any) -> None:
        family = getattr(attack, "family", DEFAULT)
        if family != self.name:
            raise PoisonlabError(f"attack '{attack.name}' belongs to family '{family}', not '{self.name}'")

    def accepts(self, cfg: ExperimentConfig) -> bool:
        return attack_family(cfg.attack) == self.name

    def config_from(self, raw: dict[str, Any]) -> ExperimentConfig:
        cfg = from_dict(ExperimentConfig, raw)
        cfg.validate()
        if attack_family(cfg.attack) != self.name:
            raise PoisonlabError(f"attack '{cfg.attack.get('name')}' belongs to family "
                                 f"'{attack_family(cfg.attack)}', not '{self.name}'; remove family: or fix it")
        return cfg

    def run(self, cfg: ExperimentConfig, data: Any = None) -> Any:
        from ..pipeline import run_steps

        return run_steps(cfg, self, data)

    def print_run(self, cfg: ExperimentConfig, outcome: Any, echo: Any) -> None:
        from ..cli_report import print_step_run

        print_step_run(cfg, outcome, echo)

    def cell_hash(self, cfg: ExperimentConfig) -> str:
        from ..pipeline import experiment_hash

        return experiment_hash(cfg.to_dict(), self.name)

    # -- grid cells -----------------------------------------------------------------
    def headline(self, regression: bool = False) -> dict[str, str]:
        """The metrics a grid averages: the measure's headline (its ``regression_headline`` for a
        regression run, when it has one)."""
        if regression and hasattr(self.measure, "regression_headline"):
            return self.measure.regression_headline
        return self.measure.headline

    def check_grid_attack(self, label: str, section: dict[str, Any]) -> None:
        from ..attacks import build_attack

        try:
            self.check_attack(build_attack(section))
        except PoisonlabError as exc:
            raise PoisonlabError(f"attacks.{label}: {exc}") from None

    def grid_defense_labels(self, raw: list[Any]) -> list[str]:
        from ..defend import check_defenses

        return [n for n, _ in check_defenses(raw)]

    def grid_cell(self, name: str, base: dict[str, Any], label: str, attack: dict[str, Any], defenses: list[Any],
                  seed: int, output: OutputConfig, workers: int | None) -> dict[str, Any]:
        if workers is not None:
            raise PoisonlabError(f"workers (grid key or --workers) sets the parallel retrainings of subpopulation "
                                 f"cells; remove it from this {self.name} grid")
        raw = copy.deepcopy(base)
        raw.update(name=f"{name}-{label}", seed=seed, attack=copy.deepcopy(attack), defenses=copy.deepcopy(defenses),
                   output=dataclasses.asdict(output))
        return raw

    def check_cell(self, cfg: ExperimentConfig) -> None:
        if cfg.defenses and cfg.data.val_fraction <= 0:
            raise PoisonlabError("defenses decide on a clean validation split; set data.val_fraction > 0")
        if cfg.pruning_aware is not None:
            from ..attacks.pruning_aware import pruning_aware_config

            pruning_aware_config(cfg.pruning_aware, cfg.train)

    def cell_summary(self, metrics: dict[str, Any], defenses: list[str]) -> dict[str, dict[str, Any]]:
        """Per defense (``none`` first): the headline metrics and defense seconds of one cell."""
        from ..run_outputs import victim_metrics

        victim = victim_metrics(metrics)
        if victim is None:
            raise KeyError("victim")
        keys = list(self.headline(is_regression_run(metrics)))
        out = {"none": {**{k: victim.get(k) for k in keys}, "defense_seconds": 0.0}}
        for d in defenses:
            m = metrics["defenses"][d]
            out[d] = {**{k: m.get(k) for k in keys}, "defense_seconds": m.get("defense_seconds", 0.0)}
        return out

    def cell_record(self, metrics: dict[str, Any], defenses: list[str]) -> dict[str, Any]:
        base = metrics["baseline"]
        if is_regression_run(metrics):
            return {"summary": self.cell_summary(metrics, defenses), "baseline_clean_accuracy": None,
                    "baseline_test_mse": base["test_mse"]}
        return {"summary": self.cell_summary(metrics, defenses), "baseline_clean_accuracy": base["clean_accuracy"]}

    def cell_done(self, metrics: dict[str, Any], defenses: list[str], cfg: Any) -> bool:
        """Whether a cell's metrics hold every number the grid reads, of the right type (the
        first headline metric and the seconds must be numbers; the others numbers or None)."""
        try:
            cells = self.cell_summary(metrics, defenses)
            regression = is_regression_run(metrics)
            first, *rest = list(self.headline(regression))
            numbers = [metrics["baseline"]["test_mse" if regression else "clean_accuracy"], *(c[k] for c in cells.values()
                                                                 for k in (first, "defense_seconds"))]
            optional = [c[k] for c in cells.values() for k in rest]
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            return False
        return all(map(is_number, numbers)) and all(v is None or is_number(v) for v in optional)

    # -- the grid's table -----------------------------------------------------------
    def grid_rows(self, cells: list[dict[str, Any]], grid: Any) -> list[dict[str, Any]]:
        """Numeric rows, one per (attack, defense incl. ``none``), aggregated over the cells' seeds."""
        rows = []
        headline = self.headline(is_regression_grid(cells))
        for attack in grid.attacks:
            mine = [c for c in cells if c["attack"] == attack]
            for d in ["none", *grid.defenses]:
                got = [c["summary"][d] for c in mine]
                rows.append({"attack": attack, "defense": d, "n_seeds": len(mine),
                             **stats({short(k): [g.get(k) for g in got] for k in headline}),
                             "defense_seconds_mean": mean_std([g["defense_seconds"] for g in got])[0],
                             "total_seconds_mean": mean_std([c["total_seconds"] for c in mine])[0]})
        return rows

    def display_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """The printed table: rates as ``mean ± std`` in percent (std in percentage points)."""
        out = []
        regression = hasattr(self.measure, "regression_headline") and bool(rows) and all(
            f"{short(k)}_mean" in rows[0] for k in self.measure.regression_headline)
        headline = self.headline(regression)
        display = getattr(self.measure, "display", {})
        for r in rows:
            row = {"attack": r["attack"], "defense": r["defense"]}
            for k, title in headline.items():
                scale, digits = display.get(k, (100.0, 2))
                row[f"{title} (mean ± std)"] = pm(r[f"{short(k)}_mean"], r[f"{short(k)}_std"], scale, digits)
            row.update({"defense s": "–" if r["defense"] == "none" else f"{r['defense_seconds_mean']:.1f}",
                        "run s": f"{r['total_seconds_mean']:.1f}", "seeds": str(r["n_seeds"])})
            out.append(row)
        return out


def short(metric: str) -> str:
    """A metric's name in grid rows (``attack_success_rate`` -> ``attack_success``)."""
    return metric[:-5] if metric.endswith("_rate") else metric


def is_regression_run(metrics: dict[str, Any]) -> bool:
    """Whether a run's metrics are a regression run's (its clean reference has a test MSE)."""
    return "test_mse" in metrics.get("baseline", {})


def is_regression_grid(cells: list[dict[str, Any]]) -> bool:
    """Whether a grid's cells are regression runs (their records hold the clean test MSE)."""
    return bool(cells) and all(c.get("baseline_test_mse") is not None for c in cells)


def attack_family(attack: dict[str, Any] | None) -> str:
    """The family an ``attack:`` section's attack declares (``backdoor`` without an attack)."""
    if attack is None:
        return DEFAULT
    from ..attacks import ATTACKS

    return getattr(ATTACKS.get(attack.get("name")), "family", DEFAULT)


FAMILIES.register("backdoor")(StepFamily("backdoor", "backdoor", victim_label="BadNet"))
FAMILIES.register("targeted")(StepFamily("targeted", "targeted", victim_label="poisoned victim"))
