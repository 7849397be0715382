"""One subpopulation-poisoning experiment, end to end (Jagielski et al., CCS 2021): the steps
of :mod:`poisonlab.subpop.steps` (load and split, check, clean reference, the poisons' plan,
one cell per subpopulation x alpha with every defense, certified curves, summaries), then the
run folder's metrics, tables and plots and the index row; and how subpopulations are found
(FeatureMatch or ClusterMatch, Sec. 4.1).
"""
from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch
import yaml

from .. import __version__, report
from ..config import config_hash
from ..data.base import Dataset
from ..errors import PoisonlabError
from ..pipeline.frame import Frame, resources, run_framed
from ..provenance import provenance
from ..store import RunFolder, save_weights
from .config import SubpopConfig
from .defended import defense_rows
from .learners import representation
from .steps import BEFORE, STEPS, SweepContext
from .subpopulations import Subpopulation, feature_match, fit_cluster_match, membership


def find_subpopulations(cfg: SubpopConfig, attacker: Dataset, test: Dataset, attacker_model: torch.nn.Module
                        ) -> tuple[list[Subpopulation], list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Subpopulations with their attacker-row and test-row memberships."""
    s = cfg.subpopulations
    if s.kind == "feature-match":
        if not attacker.meta:
            raise PoisonlabError(f"FeatureMatch needs categorical columns; data set '{cfg.data.name}' has none "
                                 f"(use subpopulations.kind: cluster-match)")
        subs = feature_match(attacker.meta, test.meta, s.features, s.min_test, s.max_test)
        return (subs, [membership(x, attacker.meta) for x in subs], [membership(x, test.meta) for x in subs],
                {"features": s.features})
    layer = s.layer
    rep_a = representation(attacker_model, attacker.x, layer)
    rep_t = representation(attacker_model, test.x, layer)
    cm = fit_cluster_match(rep_a, s.n_clusters, s.pca_dims or None, cfg.seed)
    subs = cm.subpopulations(rep_t, s.min_test, s.max_test)
    a_clusters, t_clusters = cm.assign(rep_a), cm.assign(rep_t)
    return (subs, [membership(x, clusters=a_clusters) for x in subs], [membership(x, clusters=t_clusters) for x in subs],
            {"representation_dims": int(rep_a.shape[1]), "n_clusters": s.n_clusters, "pca_dims": s.pca_dims})


def run_subpop_experiment(cfg: SubpopConfig) -> tuple[RunFolder, dict[str, Any]]:
    """Run the configured sweep (the steps of :mod:`poisonlab.subpop.steps`) in the frame every
    family shares (:mod:`poisonlab.pipeline.frame`); write the run folder and its index row."""
    ctx = SweepContext(cfg)
    frame = Frame(cfg.output.dir, cfg.name, cfg.seed, cfg.data.name, cfg.model.name,
                  f"subpopulation ({cfg.subpopulations.kind})")
    folder, metrics, _ = run_framed(frame, ctx, BEFORE, STEPS, lambda: subpop_config_hash(cfg), _finish)
    return folder, metrics


def _finish(ctx: SweepContext, folder: RunFolder, chash: str) -> tuple[dict[str, Any], dict[str, Any], None]:
    metrics = sweep_metrics(ctx)
    resources(metrics, ctx.times)
    metrics["config_hash"] = chash
    metrics["provenance"] = provenance(ctx.split)
    _write(folder, ctx.cfg, ctx.cfg.to_dict(), metrics, ctx.rows, ctx.summary, ctx.clean)
    summary = {"clean_acc": metrics["model"]["clean_accuracy"], "subpopulations": len(ctx.subs),
               **{f"worst{s['k']}_target_alpha{s['alpha']:g}": s["target_worst_k"] for s in ctx.summary},
               "seconds": ctx.times["total_seconds"]}
    return metrics, summary, None


def sweep_metrics(ctx: SweepContext) -> dict[str, Any]:
    """What a sweep records in ``metrics.json`` (time and peak memory included)."""
    cfg, spec, test, val = ctx.cfg, ctx.cfg.model, ctx.test, ctx.val
    return {
        "name": cfg.name, "version": __version__, "family": "subpopulation", "seed": cfg.seed,
        "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "workers": ctx.workers,
        "data": {"name": cfg.data.name, "victim": len(ctx.victim), "attacker": len(ctx.attacker), "test": len(test),
                 "features": int(np.prod(test.x.shape[1:])), **({"validation": len(val)} if val is not None else {})},
        "model": {"name": spec.name, "options": spec.model_options(), "mode": spec.mode,
                  "clean_accuracy": float((ctx.clean_pred == test.y.numpy()).mean())},
        "subpopulations": {"kind": cfg.subpopulations.kind, "count": len(ctx.subs), **ctx.how},
        "summary": ctx.summary, "defenses": ctx.defense_table,
        **({"certified": ctx.certified} if ctx.certified else {}), "rows": ctx.rows, "time": ctx.times,
        "retrainings": len(ctx.results),
        "seconds_per_retraining": float(np.mean([r["seconds"] for r in ctx.results])),
    }


def subpop_config_hash(cfg: SubpopConfig) -> str:
    """The experiment hash a run of ``cfg`` records: the resolved config less ``output``,
    ``workers`` (they never change a number) and ``data.dir``; an empty ``defenses`` list and a
    zero ``data.val_fraction`` are left out, so runs made before those keys existed keep their hash."""
    resolved = cfg.to_dict()
    if not resolved["defenses"]:
        del resolved["defenses"]
    hashed_data = {k: v for k, v in resolved["data"].items() if k != "dir"}
    if not hashed_data["val_fraction"]:
        del hashed_data["val_fraction"]
    return config_hash({k: v for k, v in resolved.items() if k not in ("output", "workers")} | {"data": hashed_data})


def summary_rows(summary: list[dict[str, Any]]) -> report.Table:
    """The paper's Table 3 shape: per alpha and k, mean target damage of the worst k and collateral
    (fractions; collateral shown as percentages)."""
    columns = [report.Column("alpha", "g"), report.Column("worst k", "int"),
               report.Column("target damage (worst k)", "f3"), report.Column("collateral (worst k)", "pct"),
               report.Column("collateral (all)", "pct"), report.Column("subpopulations", "int")]
    return report.Table([{"alpha": s["alpha"], "worst k": s["k"], "target damage (worst k)": s["target_worst_k"],
                          "collateral (worst k)": s["collateral_worst_k"], "collateral (all)": s["collateral_all"],
                          "subpopulations": s["n_subpops"]} for s in summary], columns)


FAIRNESS_COLUMNS = (report.Column("subpopulation"), report.Column("test rows", "int"), report.Column("alpha", "g"),
                    report.Column("poisons", "int"), report.Column("accuracy before", "pct"),
                    report.Column("accuracy after", "pct"), report.Column("target damage", "f3"),
                    report.Column("collateral", "pct"))


def fairness_rows(rows: list[dict[str, Any]], top: int = 10) -> report.Table:
    """The subpopulations hit hardest at the largest alpha: accuracy before -> after (the paper's
    'Black women with high school: 91.4% -> 76.7%' view)."""
    alpha = max(r["alpha"] for r in rows)
    worst = sorted((r for r in rows if r["alpha"] == alpha and np.isfinite(r["target"])),
                   key=lambda r: (-r["target"], r["subpop_id"]))[:top]
    return report.Table([{"subpopulation": r["description"], "test rows": r["test_size"], "alpha": alpha,
                          "poisons": r["n_poison"], "accuracy before": r["subpop_accuracy_before"],
                          "accuracy after": r["subpop_accuracy_after"], "target damage": r["target"],
                          "collateral": r["collateral"]} for r in worst], FAIRNESS_COLUMNS)


def _write(folder: RunFolder, cfg: SubpopConfig, resolved: dict[str, Any], metrics: dict[str, Any],
           rows: list[dict[str, Any]], summary: list[dict[str, Any]], clean: torch.nn.Module) -> None:
    folder.write_text("config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    folder.write_json("metrics.json", metrics)
    folder.write_text("tables/subpopulations.csv",  # plain numbers, NaN empty
                      report.to_csv(report.Table(rows, [report.Column(k) for k in (rows[0] if rows else {})])))
    report.write_table(folder, "summary", summary_rows(summary), title=f"{cfg.name}: worst-k target damage")
    if metrics["defenses"]:
        drows = defense_rows(metrics["defenses"])
        title = f"{cfg.name}: defenses (damage against the same clean model A(D))"
        folder.write_text("tables/defenses.md", report.to_markdown(drows, title))
        folder.write_text("tables/defenses.csv", report.to_csv(drows))
    if metrics.get("certified"):
        report.write_table(folder, "certified", certified_rows(metrics["certified"]), markdown=False)
    report.write_table(folder, "hardest_hit", fairness_rows(rows), title=f"{cfg.name}: hardest-hit subpopulations")
    if cfg.output.save_weights:
        save_weights(clean, folder.file("weights", "clean.safetensors"))
    if cfg.output.plots:
        plot_target_damage(folder.file("plots", "target_damage.png"), rows)
        if metrics.get("certified"):
            plot_certified(folder.file("plots", "certified.png"), metrics["certified"])


CERTIFIED_COLUMNS = (report.Column("defense"), report.Column("q", "g"), report.Column("lam", "g"),
                     report.Column("test rows", "int"), report.Column("flips r", "int"),
                     report.Column("certified accuracy", "f4"))


def certified_rows(certified: dict[str, dict[str, Any]]) -> report.Table:
    """The certified defenses' clean-D curves (Rosenfeld et al. 2020): one row per defense and
    number of flipped training labels r."""
    return report.Table([{"defense": label, "q": c["q"], "lam": c["lam"], "test rows": c["rows"], "flips r": r,
                          "certified accuracy": acc} for label, c in certified.items() for r, acc in c["curve"]],
                        CERTIFIED_COLUMNS)


def plot_certified(path: Any, certified: dict[str, dict[str, Any]]) -> None:
    """Certified accuracy of the clean-D smoothed classifier against the number of flipped labels."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, c in certified.items():
        r, acc = zip(*c["curve"])
        ax.step(r, acc, where="post", label=f"{label} (q {c['q']:g}, lam {c['lam']:g}, {c['rows']} rows)")
    ax.set_xlabel("flipped training labels r")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_target_damage(path: Any, rows: list[dict[str, Any]]) -> None:
    """Target damage of every subpopulation against its size, one colour per alpha."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alpha in sorted({r["alpha"] for r in rows}):
        sel = [r for r in rows if r["alpha"] == alpha]
        ax.scatter([r["test_size"] for r in sel], [r["target"] for r in sel], s=12, label=f"alpha {alpha:g}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("subpopulation test rows")
    ax.set_ylabel("target damage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
