"""One subpopulation-poisoning experiment, end to end (Jagielski et al., CCS 2021).

load -> victim / attacker split of the training rows (Sec. 3) -> the clean validation split
carved from the victim's rows (``data.val_fraction``; D is the rest) -> features (TF-IDF for
text) -> clean victim model A(D) and the attacker's own model -> subpopulations
(FeatureMatch or ClusterMatch, Sec. 4.1) and each one's poison label (Sec. 4.2) -> the sweep
over subpopulations x alphas (:mod:`poisonlab.subpop.sweep`), with the configured defenses
(:mod:`poisonlab.subpop.defended`) run in every task -> the certified defense's clean-D
certified-accuracy curve -> tables, plots, run folder and index row.
"""
from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import torch
import yaml

from .. import __version__, report
from ..config import config_hash
from ..data import load_data
from ..data.base import Dataset
from ..data.splits import limit_rows
from ..errors import PoisonlabError
from ..models.layers import get_layer
from ..provenance import provenance
from ..resources import peak_rss_mb, timed
from ..store import RunFolder, open_run, prepare_root, record_run, save_weights
from .config import SubpopConfig
from .defended import certified_curve, check_binary, defense_rows, defense_summary
from .learners import (
    TextFeatures,
    build,
    featurize,
    fit_scratch,
    fit_victim,
    predictions,
    probabilities,
    representation,
)
from .metrics import worst_k_summary
from .poisons import least_likely_label, poison_count
from .subpopulations import Subpopulation, feature_match, fit_cluster_match, membership
from .sweep import SweepInputs, default_workers, run_sweep
from .threat import attacker_split, validation_split


def _find_subpopulations(cfg: SubpopConfig, attacker: Dataset, test: Dataset, attacker_model: torch.nn.Module
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
    """Run the configured sweep; write the run folder and its index row."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    prepare_root(cfg.output.dir)  # a file, unwritable or damaged store fails before any training
    with timed(times, "load_seconds"):
        split = load_data(cfg.data)
    train = limit_rows(split.train, cfg.data.train_limit, cfg.seed)
    victim_idx, attacker_idx = attacker_split(len(train), cfg.data.attacker_fraction, cfg.seed, train.y)
    # the clean validation split: victim rows, drawn before any poison exists; D is the rest
    keep_idx, val_idx = validation_split(len(victim_idx), cfg.data.val_fraction, cfg.seed, train.y[victim_idx])
    victim, attacker, test = train.subset(victim_idx[keep_idx]), train.subset(attacker_idx), split.test
    val = train.subset(victim_idx[val_idx]) if len(val_idx) else None
    text = None
    if "text" in train.meta and train.x.shape[1:] == (0,):
        with timed(times, "features_seconds"):
            text = TextFeatures(max_features=cfg.data.text_features).fit(victim.meta["text"])
            victim, attacker, test = featurize(victim, text), featurize(attacker, text), featurize(test, text)
            val = featurize(val, text) if val is not None else None
    spec = cfg.model
    specs = cfg.defense_specs()
    for d in specs:  # fail before any training
        check_binary(d, test.num_classes)
        if d.name == "fine-pruning":
            from ..defenses.pruning import resolve_layer

            resolve_layer(build(spec, attacker, cfg.seed), None, kind="linear")  # a hidden layer to prune
    if isinstance(cfg.attack.label, int) and cfg.attack.label >= test.num_classes:
        raise PoisonlabError(f"attack.label {cfg.attack.label} is out of range; the data set has classes "
                             f"0..{test.num_classes - 1}")
    layer = cfg.subpopulations.layer
    if cfg.subpopulations.kind == "cluster-match" and layer not in (None, "auto", "input"):
        get_layer(build(spec, attacker, cfg.seed), layer)  # an unknown layer fails before any training
    with timed(times, "clean_seconds"):
        pretrained = fit_scratch(spec, victim, cfg.seed)
        clean = pretrained if spec.mode == "scratch" else fit_victim(spec, pretrained, victim, cfg.seed)
        clean_pred = predictions(clean, test.x)
        attacker_model = fit_scratch(spec, attacker, cfg.seed + 1)
    with timed(times, "subpopulations_seconds"):
        subs, a_members, t_members, how = _find_subpopulations(cfg, attacker, test, attacker_model)
    keep = [i for i, m in enumerate(a_members) if m.any()]
    if cfg.subpopulations.limit is not None:
        keep = keep[:cfg.subpopulations.limit]
    subs = [subs[i] for i in keep]
    a_members, t_members = [a_members[i] for i in keep], [t_members[i] for i in keep]
    if cfg.attack.label == "least-likely":
        labels = [least_likely_label(probabilities(attacker_model, attacker.x[m])) for m in a_members]
    else:
        labels = [int(cfg.attack.label)] * len(subs)
    workers = cfg.workers or default_workers()
    inputs = SweepInputs(spec, victim, attacker, test, pretrained if spec.mode != "scratch" else None, clean_pred,
                         a_members, t_members, labels, list(cfg.attack.alphas), cfg.seed, specs, val)
    with timed(times, "sweep_seconds"):
        results = run_sweep(inputs, workers)
    certified: dict[str, Any] = {}
    if any(d.name == "certified" for d in specs):
        most = max(poison_count(a, int(m.sum())) for a in cfg.attack.alphas for m in a_members)
        with timed(times, "certified_curve_seconds"):
            for d in (d for d in specs if d.name == "certified"):
                max_r = d.params["curve_max_r"] if d.params["curve_max_r"] is not None else max(1, most)
                certified[d.label] = certified_curve(d, victim, test, cfg.seed, max_r)
    rows = [_row(subs[r["index"]], a_members[r["index"]], t_members[r["index"]], r) for r in results]
    summary = worst_k_summary([{"subpop_id": r["subpop_id"], "alpha": r["alpha"], "target": r["target"],
                                "collateral": r["collateral"]} for r in rows])
    defenses = defense_summary(rows, [d.label for d in inputs.defenses]) if inputs.defenses else []
    for label, c in certified.items():
        c["per_alpha"] = [{"alpha": a, **{k: _mean([r[f"{label}:{k}"] for r in rows if r["alpha"] == a])
                                          for k in ("certified_accuracy", "target_vs_smoothed_clean")}}
                          for a in sorted({r["alpha"] for r in rows})]
    y = test.y.numpy()
    times["total_seconds"] = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "name": cfg.name, "version": __version__, "family": "subpopulation", "seed": cfg.seed,
        "platform": platform.platform(),
        "torch": torch.__version__, "workers": workers,
        "data": {"name": cfg.data.name, "victim": len(victim), "attacker": len(attacker), "test": len(test),
                 "features": int(np.prod(test.x.shape[1:])), **({"validation": len(val)} if val is not None else {})},
        "model": {"name": spec.name, "options": spec.model_options(), "mode": spec.mode,
                  "clean_accuracy": float((clean_pred == y).mean())},
        "subpopulations": {"kind": cfg.subpopulations.kind, "count": len(subs), **how},
        "summary": summary, "defenses": defenses, **({"certified": certified} if certified else {}),
        "rows": rows, "time": times,
        "retrainings": len(results), "seconds_per_retraining": float(np.mean([r["seconds"] for r in results])),
        "peak_memory_mb": {"rss": peak_rss_mb()},
    }
    resolved = cfg.to_dict()
    chash = subpop_config_hash(cfg)
    with open_run(cfg.output.dir, cfg.name, chash) as folder:
        metrics["config_hash"] = chash
        metrics["provenance"] = provenance(split)
        _write(folder, cfg, resolved, metrics, rows, summary, clean)
    record_run(cfg.output.dir, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": cfg.name,
        "dataset": cfg.data.name, "model": spec.name, "attack": f"subpopulation ({cfg.subpopulations.kind})",
        "config_hash": chash, "seed": cfg.seed, "version": __version__, "path": str(folder.path.resolve()),
        "summary": {"clean_acc": metrics["model"]["clean_accuracy"], "subpopulations": len(subs),
                    **{f"worst{s['k']}_target_alpha{s['alpha']:g}": s["target_worst_k"] for s in summary},
                    "seconds": times["total_seconds"]},
        "metrics": {k: v for k, v in metrics.items() if k != "rows"},
    })
    return folder, metrics


def _mean(values: list[float]) -> float:
    v = [x for x in values if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


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


def _row(sub: Subpopulation, a_member: np.ndarray, t_member: np.ndarray, r: dict[str, Any]) -> dict[str, Any]:
    return {"subpop_id": sub.id, "description": sub.description, "test_size": int(t_member.sum()),
            "attacker_size": int(a_member.sum()), **{k: v for k, v in r.items() if k != "index"}}


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
