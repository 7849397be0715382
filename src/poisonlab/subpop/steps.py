"""The steps of one subpopulation sweep (Jagielski et al., CCS 2021), in run order (:data:`STEPS`),
each reading and filling a :class:`SweepContext` — the same sequence as every family's:

load the data and carve the splits (victim / attacker, Sec. 3; the clean validation split from
the victim's rows) -> check everything that can fail -> fit the clean reference A(D) and the
attacker's own model -> plan the poisons (subpopulations by FeatureMatch or ClusterMatch and
their labels, Sec. 4) -> the cells, one per (subpopulation, alpha): poison, fit the victim,
run every defense, measure target damage and collateral against A(D)
(:mod:`poisonlab.subpop.sweep`) -> the certified defenses' clean curves -> summaries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from torch import nn

from ..data import load_data
from ..data.base import Dataset, DataSplit
from ..data.splits import limit_rows
from ..errors import PoisonlabError
from ..models.layers import get_layer
from ..resources import timed
from .config import SubpopConfig
from .defended import check_binary, defense_summary
from .learners import TextFeatures, build, featurize, fit_scratch, fit_victim, predictions, probabilities
from .metrics import worst_k_summary
from .poisons import least_likely_label, poison_count
from .subpopulations import Subpopulation
from .sweep import SweepInputs, default_workers, run_sweep
from .threat import attacker_split, validation_split


@dataclass
class SweepContext:
    """The state of one sweep, filled step by step."""

    cfg: SubpopConfig
    start: float = field(default_factory=time.perf_counter)
    times: dict[str, float] = field(default_factory=dict)
    split: DataSplit | None = None
    victim: Dataset | None = None
    attacker: Dataset | None = None
    test: Dataset | None = None
    val: Dataset | None = None
    defenses: list[Any] = field(default_factory=list)
    pretrained: nn.Module | None = None
    clean: nn.Module | None = None
    clean_pred: np.ndarray | None = None
    attacker_model: nn.Module | None = None
    subs: list[Subpopulation] = field(default_factory=list)
    a_members: list[np.ndarray] = field(default_factory=list)
    t_members: list[np.ndarray] = field(default_factory=list)
    how: dict[str, Any] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    workers: int = 1
    results: list[dict[str, Any]] = field(default_factory=list)
    certified: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    defense_table: list[dict[str, Any]] = field(default_factory=list)
    folder: Any = None


def load(ctx: SweepContext) -> None:
    """The data, the victim / attacker split of its training rows and the clean validation split
    (victim rows, drawn before any poison exists; D is the rest); TF-IDF features for text."""
    cfg = ctx.cfg
    with timed(ctx.times, "load_seconds"):
        ctx.split = load_data(cfg.data)
    train = limit_rows(ctx.split.train, cfg.data.train_limit, cfg.seed)
    victim_idx, attacker_idx = attacker_split(len(train), cfg.data.attacker_fraction, cfg.seed, train.y)
    keep_idx, val_idx = validation_split(len(victim_idx), cfg.data.val_fraction, cfg.seed, train.y[victim_idx])
    ctx.victim, ctx.attacker, ctx.test = train.subset(victim_idx[keep_idx]), train.subset(attacker_idx), ctx.split.test
    ctx.val = train.subset(victim_idx[val_idx]) if len(val_idx) else None
    if "text" in train.meta and train.x.shape[1:] == (0,):
        with timed(ctx.times, "features_seconds"):
            text = TextFeatures(max_features=cfg.data.text_features).fit(ctx.victim.meta["text"])
            ctx.victim, ctx.attacker, ctx.test = (featurize(d, text) for d in (ctx.victim, ctx.attacker, ctx.test))
            ctx.val = featurize(ctx.val, text) if ctx.val is not None else None


def check(ctx: SweepContext) -> None:
    """Everything that can fail before any training: defenses, the poison label, the layer."""
    cfg, spec = ctx.cfg, ctx.cfg.model
    ctx.defenses = cfg.defense_specs()
    for d in ctx.defenses:
        check_binary(d, ctx.test.num_classes)
        check_model = getattr(d.cfg, "check_model", None)  # e.g. Fine-Pruning: a layer to prune
        if check_model is not None:
            check_model(build(spec, ctx.attacker, cfg.seed))
    if isinstance(cfg.attack.label, int) and cfg.attack.label >= ctx.test.num_classes:
        raise PoisonlabError(f"attack.label {cfg.attack.label} is out of range; the data set has classes "
                             f"0..{ctx.test.num_classes - 1}")
    layer = cfg.subpopulations.layer
    if cfg.subpopulations.kind == "cluster-match" and layer not in (None, "auto", "input"):
        get_layer(build(spec, ctx.attacker, cfg.seed), layer)


def fit_reference(ctx: SweepContext) -> None:
    """The clean reference A(D) (from scratch, or continued in the transfer / fine-tune modes) and
    the attacker's own model on its rows (seed + 1)."""
    cfg, spec = ctx.cfg, ctx.cfg.model
    with timed(ctx.times, "clean_seconds"):
        ctx.pretrained = fit_scratch(spec, ctx.victim, cfg.seed)
        ctx.clean = ctx.pretrained if spec.mode == "scratch" else fit_victim(spec, ctx.pretrained, ctx.victim, cfg.seed)
        ctx.clean_pred = predictions(ctx.clean, ctx.test.x)
        ctx.attacker_model = fit_scratch(spec, ctx.attacker, cfg.seed + 1)


def plan(ctx: SweepContext) -> None:
    """The poisons' plan: the subpopulations with attacker rows (at most ``limit``) and each one's label."""
    from .experiment import find_subpopulations

    cfg = ctx.cfg
    with timed(ctx.times, "subpopulations_seconds"):
        subs, a_members, t_members, ctx.how = find_subpopulations(cfg, ctx.attacker, ctx.test, ctx.attacker_model)
    keep = [i for i, m in enumerate(a_members) if m.any()]
    if cfg.subpopulations.limit is not None:
        keep = keep[:cfg.subpopulations.limit]
    ctx.subs = [subs[i] for i in keep]
    ctx.a_members, ctx.t_members = [a_members[i] for i in keep], [t_members[i] for i in keep]
    if cfg.attack.label == "least-likely":
        ctx.labels = [least_likely_label(probabilities(ctx.attacker_model, ctx.attacker.x[m])) for m in ctx.a_members]
    else:
        ctx.labels = [int(cfg.attack.label)] * len(ctx.subs)


def cells(ctx: SweepContext) -> None:
    """Every (subpopulation, alpha) cell: poison, fit the victim, defend, measure (in parallel)."""
    cfg, spec = ctx.cfg, ctx.cfg.model
    ctx.workers = cfg.workers or default_workers()
    inputs = SweepInputs(spec, ctx.victim, ctx.attacker, ctx.test, ctx.pretrained if spec.mode != "scratch" else None,
                         ctx.clean_pred, ctx.a_members, ctx.t_members, ctx.labels, list(cfg.attack.alphas), cfg.seed,
                         ctx.defenses, ctx.val)
    with timed(ctx.times, "sweep_seconds"):
        ctx.results = run_sweep(inputs, ctx.workers)


def certify(ctx: SweepContext) -> None:
    """Once per sweep, every defense that reports on clean D (``clean_report``: the certified
    defense's certified-accuracy curve), for the report only."""
    reporting = [d for d in ctx.defenses if hasattr(d.cfg, "clean_report")]
    if not reporting:
        return
    most = max(poison_count(a, int(m.sum())) for a in ctx.cfg.attack.alphas for m in ctx.a_members)
    with timed(ctx.times, "certified_curve_seconds"):
        for d in reporting:
            ctx.certified[d.label] = d.cfg.clean_report(ctx.victim, ctx.test, ctx.cfg.seed, most)


def summarize(ctx: SweepContext) -> None:
    """Per-cell rows, the worst-k summary, the defenses' table and the certified per-alpha means."""
    ctx.rows = [_row(ctx.subs[r["index"]], ctx.a_members[r["index"]], ctx.t_members[r["index"]], r)
                for r in ctx.results]
    ctx.summary = worst_k_summary([{"subpop_id": r["subpop_id"], "alpha": r["alpha"], "target": r["target"],
                                    "collateral": r["collateral"]} for r in ctx.rows])
    ctx.defense_table = defense_summary(ctx.rows, [d.label for d in ctx.defenses]) if ctx.defenses else []
    for label, c in ctx.certified.items():
        c["per_alpha"] = [{"alpha": a, **{k: _mean([r[f"{label}:{k}"] for r in ctx.rows if r["alpha"] == a])
                                          for k in ("certified_accuracy", "target_vs_smoothed_clean")}}
                          for a in sorted({r["alpha"] for r in ctx.rows})]


def _row(sub: Subpopulation, a_member: np.ndarray, t_member: np.ndarray, r: dict[str, Any]) -> dict[str, Any]:
    return {"subpop_id": sub.id, "description": sub.description, "test_size": int(t_member.sum()),
            "attacker_size": int(a_member.sum()), **{k: v for k, v in r.items() if k != "index"}}


def _mean(values: list[float]) -> float:
    v = [x for x in values if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


BEFORE: tuple[Callable[[SweepContext], None], ...] = (load, check)
"""What runs before the run folder is opened: loading, splitting and every check."""
STEPS: tuple[Callable[[SweepContext], None], ...] = (fit_reference, plan, cells, certify, summarize)
"""The steps of a sweep inside its run folder, in run order."""
