"""The subpopulation family (Jagielski et al., CCS 2021): one experiment is a sweep over
subpopulations x alphas (:mod:`poisonlab.subpop.experiment`), each task running every defense
of its Sec. 6 (:mod:`poisonlab.subpop.defended`).

In a grid, an attack entry sets ``subpopulations:`` and ``attack:`` only; ``workers`` is left
out of the cell's hash and cannot change its numbers (the sweep's tasks are seeded by
position). Table: per attack, alpha and defense, the mean target damage of the 5
subpopulations worst *without* defense (the same ones for every defense), mean collateral,
clean accuracy and the shares of poisons / clean rows removed.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import OutputConfig, from_dict
from ..errors import PoisonlabError, did_you_mean
from ..store_json import is_number
from . import FAMILIES
from .grid_stats import mean_std, pm, stats
from .step_family import NOT_IN_BASE

MEASURES = ("target_worst_k", "collateral_all", "clean_accuracy", "poisons_removed", "clean_removed")
ATTACK_KEYS = ("subpopulations", "attack")
NOT_IN_BASE_SUBPOP = {
    "subpopulations": "set subpopulations in each attack entry (attacks.LABEL.subpopulations)",
    "attack": "set alphas and the poison label in each attack entry (attacks.LABEL.attack)",
    **{k: v for k, v in NOT_IN_BASE.items() if k != "attack"},
    "workers": "set workers at the grid's top level or with --workers",
}
NOTE = ("every number: mean ± std over seeds; target damage: mean over the k subpopulations worst "
        "without defense (the same ones for every defense), accuracy lost against the clean model A(D) "
        "(Jagielski et al., CCS 2021); collateral, clean accuracy and rows removed: means over all attacked "
        "subpopulations; defense thresholds are fixed or read off the clean validation split, never the "
        "test set")


@dataclass
class SweepOutcome:
    """What one sweep produced: its run id, folder and metrics."""

    run_id: str
    path: Path
    metrics: dict[str, Any]


class SubpopulationFamily:
    """Subpopulation poisoning by label flipping (see module docstring)."""

    name = "subpopulation"
    base_help = "a subpop config mapping (data:, model:)"
    attack_example = "featurematch: {subpopulations: {kind: feature-match}, attack: {alphas: [1.0]}}"
    not_in_base = NOT_IN_BASE_SUBPOP
    selection = ("defense thresholds are fixed parameters or decided on the clean validation split; "
                 "no test row is read to choose them")
    notes = [NOTE]

    @property
    def config_class(self) -> type:
        from ..subpop.config import SubpopConfig

        return SubpopConfig

    def config_from(self, raw: dict[str, Any]) -> Any:
        cfg = from_dict(self.config_class, raw)
        cfg.validate()
        return cfg

    def run(self, cfg: Any, data: Any = None) -> SweepOutcome:
        from ..subpop.experiment import run_subpop_experiment

        if data is not None:
            raise PoisonlabError("a subpopulation sweep reads its data from data: (register arrays with "
                                 "poisonlab.data.register_dataset and name them there)")
        folder, metrics = run_subpop_experiment(cfg)
        return SweepOutcome(folder.run_id, folder.path, metrics)

    def print_run(self, cfg: Any, outcome: Any, echo: Any) -> None:
        from ..cli_report import print_sweep

        print_sweep(cfg, outcome, echo)

    def cell_hash(self, cfg: Any) -> str:
        from ..subpop.experiment import subpop_config_hash

        return subpop_config_hash(cfg)

    # -- grid cells -----------------------------------------------------------------
    def check_grid_attack(self, label: str, section: dict[str, Any]) -> None:
        """An entry sets ``subpopulations:`` and ``attack:`` only (how subpopulations are found,
        Sec. 4.1; poison sizes and label, Sec. 4.2)."""
        others = {f.name for f in dataclasses.fields(self.config_class)} - set(ATTACK_KEYS)
        for key in section:
            if key in ATTACK_KEYS:
                continue
            if key in others:
                where = NOT_IN_BASE_SUBPOP.get(key, "set it in the grid's base: (all attacks share data and model)")
                raise PoisonlabError(f"attacks.{label} must not set '{key}' (an attack entry sets only "
                                     f"{' and '.join(ATTACK_KEYS)}): {where}")
            from ..checks import one_key

            hint = did_you_mean(key, list(ATTACK_KEYS)) if isinstance(key, str) and len(key) <= 100 else ""
            raise PoisonlabError(f"unknown key 'attacks.{label}.{one_key(key)}'{hint}; "
                                 f"an attack entry may set: {', '.join(ATTACK_KEYS)}")
        try:  # the entry over the default config: its own keys and values, before any base is read
            from_dict(self.config_class, copy.deepcopy(section)).validate()
        except PoisonlabError as exc:
            raise PoisonlabError(f"attacks.{label}: {exc}") from None

    def grid_defense_labels(self, raw: list[Any]) -> list[str]:
        from ..subpop.defended import parse_defenses

        return [spec.label for spec in parse_defenses(raw)]

    def grid_cell(self, name: str, base: dict[str, Any], label: str, attack: dict[str, Any], defenses: list[Any],
                  seed: int, output: OutputConfig, workers: int | None) -> dict[str, Any]:
        raw = copy.deepcopy(base)
        raw.update(copy.deepcopy(attack))
        raw.update(name=f"{name}-{label}", seed=seed, workers=workers, defenses=copy.deepcopy(defenses),
                   output=dataclasses.asdict(output))
        return raw

    def check_cell(self, cfg: Any) -> None:
        """Nothing beyond the config's own validation."""

    def cell_summary(self, metrics: dict[str, Any], defenses: list[str]) -> list[dict[str, Any]]:
        """One entry per (defense, alpha), ``none`` first: the cell's ``metrics["defenses"]`` table,
        or that table computed from its rows when the grid has no defense. Rows removed are None
        for ``none``."""
        from ..subpop.defended import defense_summary

        table = metrics.get("defenses") or defense_summary(metrics["rows"], [])
        out = []
        for s in table:
            if s["defense"] != "none" and s["defense"] not in defenses:
                continue
            undefended = s["defense"] == "none"
            out.append({"defense": s["defense"], "alpha": s["alpha"], "k": s["k"],
                        "worst_subpops": list(s.get("worst_subpops", [])),
                        **{m: None if undefended and m in ("poisons_removed", "clean_removed") else s[m]
                           for m in MEASURES}})
        return out

    def cell_record(self, metrics: dict[str, Any], defenses: list[str]) -> dict[str, Any]:
        found = metrics.get("subpopulations")
        count = found.get("count") if isinstance(found, dict) else None
        return {"summary": self.cell_summary(metrics, defenses),
                "clean_model_accuracy": metrics["model"]["clean_accuracy"],
                "subpopulations": count if isinstance(count, int) and not isinstance(count, bool) else None,
                "workers": metrics.get("workers")}

    def cell_done(self, metrics: dict[str, Any], defenses: list[str], cfg: Any) -> bool:
        """Whether a cell's metrics hold every (defense, alpha) entry the grid reads (every alpha
        of ``cfg``), each number of the right type."""
        if not all(k in metrics for k in ("summary", "time", "model")):
            return False
        try:
            entries = self.cell_summary(metrics, defenses)
            ok = is_number(metrics["model"]["clean_accuracy"]) and all(
                is_number(e["alpha"]) and isinstance(e["k"], int) and not isinstance(e["k"], bool)
                and all(isinstance(w, str) for w in e["worst_subpops"])
                and all(e[m] is None or is_number(e[m]) for m in MEASURES) for e in entries)
            have = {(e["defense"], e["alpha"]) for e in entries}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return False
        wanted = ["none", *defenses]
        if not ok or not set(wanted) <= {d for d, _ in have}:
            return False
        alphas = list(cfg.attack.alphas) if cfg is not None else None
        return alphas is None or all((d, a) in have for d in wanted for a in alphas)

    # -- the grid's table -----------------------------------------------------------
    def grid_rows(self, cells: list[dict[str, Any]], grid: Any) -> list[dict[str, Any]]:
        """Numeric rows, one per (attack, alpha, defense incl. ``none``), aggregated over seeds."""
        rows = []
        for attack in grid.attacks:
            alphas = next(list(c.config.attack.alphas) for c in grid.cells if c.attack == attack)
            mine = [c for c in cells if c["attack"] == attack]
            for alpha in alphas:
                for d in ["none", *grid.defenses]:
                    got = [_entry(c, d, alpha) for c in mine]
                    rows.append({"attack": attack, "alpha": alpha, "defense": d, "n_seeds": len(mine),
                                 "k": max(g["k"] for g in got),
                                 **stats({m: [g[m] for g in got] for m in MEASURES}),
                                 "total_seconds_mean": mean_std([c["total_seconds"] for c in mine])[0]})
        return rows

    def display_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Every number ``mean ± std`` over seeds: target damage as a fraction, the rest in percent."""
        ks = sorted({r["k"] for r in rows})
        target = f"target damage, worst {ks[0] if len(ks) == 1 else 'k'}"
        return [{"attack": r["attack"], "alpha": f"{r['alpha']:g}", "defense": r["defense"],
                 target: pm(r["target_worst_k_mean"], r["target_worst_k_std"], scale=1.0, digits=3),
                 "collateral %": pm(r["collateral_all_mean"], r["collateral_all_std"]),
                 "clean acc. %": pm(r["clean_accuracy_mean"], r["clean_accuracy_std"]),
                 "poisons removed %": pm(r["poisons_removed_mean"], r["poisons_removed_std"]),
                 "clean rows removed %": pm(r["clean_removed_mean"], r["clean_removed_std"]),
                 "run s": f"{r['total_seconds_mean']:.1f}", "seeds": str(r["n_seeds"])} for r in rows]


def _entry(cell: dict[str, Any], defense: str, alpha: float) -> dict[str, Any]:
    for s in cell["summary"]:
        if s["defense"] == defense and s["alpha"] == alpha:
            return s
    raise PoisonlabError(f"run {cell['run_id']} has no result for defense {defense!r} at alpha {alpha:g}; "
                         f"delete it from the store and run the grid again")


FAMILIES.register("subpopulation")(SubpopulationFamily())
