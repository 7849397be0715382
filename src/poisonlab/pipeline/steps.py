"""The steps of one experiment, in run order (:data:`STEPS`); each reads and fills the
:class:`~poisonlab.pipeline.context.Context`.

Every check that can fail runs before any training (unknown names, layers, needs); the
clean reference is fitted before the attack poisons, so an attack may use it as its
surrogate (:class:`~poisonlab.pipeline.context.Reference`).
"""
from __future__ import annotations

import platform
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__, report
from ..attacks import build_attack
from ..data import load_data
from ..data.splits import carve_validation, keep_classes, limit_rows
from ..defend import check_defense_needs, check_defenses, defense_table, run_defenses
from ..defenses import DefenseInputs, FilterContext
from ..errors import PoisonlabError
from ..provenance import provenance
from ..resources import peak_rss_mb, timed
from . import cells
from .cells import Cell, CellWork
from .context import Context, Reference, Victim
from .extras import enabled_extras, run_stage
from .fit import fit_clean, fit_poisoned, new_model
from .measuring import measure_model, model_metrics


def prepare(ctx: Context) -> None:
    """Build the attack, the defenses and the optional steps from the config (nothing is loaded)."""
    cfg = ctx.cfg
    ctx.attack = build_attack(cfg.attack) if cfg.attack is not None else None
    if ctx.attack is not None:
        ctx.family.check_attack(ctx.attack)
    ctx.defenses = check_defenses(cfg.defenses)
    if ctx.defenses and ctx.attack is None:
        raise PoisonlabError("defenses need an attack to defend against; add an attack: section")
    ctx.extras = enabled_extras(cfg)


def load(ctx: Context) -> None:
    """Load the data, carve the clean validation split from the training rows, run every check."""
    cfg = ctx.cfg
    with timed(ctx.times, "load_seconds"):
        ctx.split = ctx.given if ctx.given is not None else load_data(cfg.data)
    train_all = limit_rows(keep_classes(ctx.split.train, cfg.data.classes), cfg.data.train_limit, cfg.seed)
    ctx.train, ctx.val = carve_validation(train_all, cfg.data.val_fraction, cfg.seed)
    ctx.test = keep_classes(ctx.split.test, cfg.data.classes)
    # the digests of what was loaded, then the loaded training rows go: the run keeps only the
    # rows it uses (a copy of MNIST's 60,000 images less in memory for the whole run)
    ctx.provenance = provenance(ctx.split)
    ctx.split = None
    if (ctx.defenses or cfg.pruning_aware is not None) and ctx.val is None:
        raise PoisonlabError("defenses and the pruning-aware attack decide on a clean validation split; "
                             "set data.val_fraction > 0")
    from .task_checks import check_task
    from .victim_fit import check_recipe

    model = new_model(ctx, ctx.train)
    check_task(ctx, model)  # regression data: a regressor, an attack and defenses that support it
    check_recipe(ctx, model)  # an unknown model, bad options or recipe fail before training
    run_stage(ctx, "check")
    run_stage(ctx, "after_data")
    if ctx.defenses:  # a defense whose needs this experiment does not meet fails here, before any training
        model = new_model(ctx, ctx.train)
        check_defense_needs(ctx.defenses, DefenseInputs(ctx.train, None, lambda ds, name: None, None, ctx.val,
                                                        model=model, test=ctx.test))
        for _, cfg in ctx.defenses:  # and one that cannot act on this model (no layer to prune)
            if hasattr(cfg, "check_model"):
                cfg.check_model(model)
    if ctx.attack is not None:
        ctx.attack.check(ctx.train)
        if hasattr(ctx.attack, "check_model"):  # a layer the attack reads exists (before any training)
            ctx.attack.check_model(new_model(ctx, ctx.train))


def fit_reference(ctx: Context) -> None:
    """Fit (or load from the cache) the clean reference and measure it."""
    ctx.clean = fit_clean(ctx, ctx.train)


def cell_work(ctx: Context) -> CellWork:
    """The experiment's main cell (:mod:`poisonlab.pipeline.cells`): the attack's plan (reading the
    clean reference as its surrogate when it declares ``uses_reference``), the run's own fit and
    the family's measure."""
    attack = ctx.attack

    def plan(key: tuple, rng: np.random.Generator) -> tuple[Any, Any]:
        if getattr(attack, "uses_reference", False):
            poisoned = attack.poison(ctx.train, rng, Reference(ctx.clean.model, ctx.val, ctx.device, ctx.cfg.seed,
                                                               ctx.test))
        else:
            poisoned = attack.poison(ctx.train, rng)
        return poisoned, attack.evaluation_set(ctx.test)

    return CellWork(plan, lambda data, name: fit_poisoned(ctx, data, name), ctx.family.measure, ctx.test, ctx.cfg.seed,
                    ctx.defenses, ctx.val, ctx.device, ctx.cfg.train.eval_batch_size, salt=0xBAD)


def poison(ctx: Context) -> None:
    """The attack poisons the training rows: the cell step, for the one cell ``()``."""
    if ctx.attack is None:
        return
    ctx.work, ctx.cell = cell_work(ctx), Cell(())
    cells.poison(ctx.work, ctx.cell)
    ctx.poison, ctx.evaluation = ctx.cell.poison, ctx.cell.evaluation
    ctx.train = shared_rows(ctx.train, ctx.poison.dataset)


def shared_rows(train: Any, poisoned: Any) -> Any:
    """``train`` as a view of the first rows of ``poisoned`` when the attack only appended rows
    (its first ``len(train)`` rows are ``train``'s, bit for bit): one copy of the training set
    in memory instead of two (170 MB for MNIST). Otherwise ``train`` itself."""
    n = len(train)
    if len(poisoned) < n or not (torch.equal(poisoned.x[:n], train.x) and torch.equal(poisoned.y[:n], train.y)):
        return train
    return type(train)(poisoned.x[:n], poisoned.y[:n], list(train.classes), train.meta)


def fit_victim(ctx: Context) -> None:
    """Fit the main victim on the poisoned training set, the same way as the clean reference."""
    if ctx.poison is None:
        return
    cells.fit_victim(ctx.work, ctx.cell)
    ctx.victims.append(Victim("victim", ctx.family.victim_label, ctx.cell.trained, filterable=True, weights=None))


def measure(ctx: Context) -> None:
    """Measure the clean reference and the victim; the run's metrics start here."""
    cfg, test = ctx.cfg, ctx.test
    base_eval, ctx.clean_preds = measure_model(ctx, ctx.clean.model, "baseline")
    ctx.metrics = {
        "name": cfg.name, "version": __version__, "family": ctx.family.name, "seed": cfg.seed,
        "device": str(ctx.device), "config_hash": ctx.config_hash, "provenance": ctx.provenance,
        "platform": platform.platform(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # CPU sums (so the last digits) can depend on it
        "data": {"name": cfg.data.name, "train": len(ctx.train), "validation": len(ctx.val) if ctx.val else 0,
                 "test": len(test), "classes": test.num_classes, "shape": list(test.x.shape[1:]),
                 **({"task": "regression"} if test.is_regression else {})},
        "baseline": model_metrics(ctx.clean, base_eval),
    }
    victim = ctx.victim
    if victim is None:
        return
    cells.measure(ctx.work, ctx.cell)
    victim.metrics, victim.preds = model_metrics(victim.trained, ctx.cell.metrics), ctx.cell.preds
    ctx.metrics["attack"] = {**ctx.attack.describe(), "n_poison": ctx.poison.n_poison,
                             "train_size_poisoned": len(ctx.poison.dataset),
                             **ctx.family.measure.describe(ctx.evaluation)}
    ctx.metrics["victim"] = victim.metrics
    ctx.metrics["victim_label"] = victim.label
    if "clean_error" in base_eval and "clean_error" in victim.metrics:
        ctx.metrics["clean_error_increase"] = victim.metrics["clean_error"] - base_eval["clean_error"]
    if "test_mse" in base_eval and "test_mse" in victim.metrics:  # regression (Jagielski et al. 2018)
        ctx.metrics["test_mse_increase"] = victim.metrics["test_mse"] - base_eval["test_mse"]
        ctx.metrics["test_mse_ratio"] = victim.metrics["test_mse"] / max(base_eval["test_mse"], 1e-300)


def analyse(ctx: Context) -> None:
    """Optional analyses of the victim, then optional further victims."""
    run_stage(ctx, "analyse")
    run_stage(ctx, "add_victims")
    for v in ctx.victims:
        if v.key != "victim":
            ctx.metrics[v.key] = v.metrics


def filter_context(ctx: Context) -> FilterContext:
    """What filtering defenses get: the poisoned rows, which are poison, how to retrain the victim."""
    a = ctx.cfg.attack or {}
    target = a.get("target", 0) if a.get("labels", "single-target") == "single-target" else None
    target = getattr(ctx.attack, "poison_class_", target)  # a targeted attack: the class its poisons serve
    target = getattr(ctx.attack, "filter_target", target)  # an availability attack: none
    return FilterContext(ctx.poison.dataset, ctx.poison.poison_mask,
                         lambda ds, name: fit_poisoned(ctx, ds, f"retrain ({name})").model, target, ctx.val)


def defend(ctx: Context) -> None:
    """Every configured defense against every victim; the attack x defense table."""
    if not ctx.defenses:
        return
    evaluate: Callable[[Any, str], dict[str, Any]] = lambda m, name: measure_model(ctx, m, name)[0]  # noqa: E731
    from ..defenses import DEFENSES

    rows: list[dict[str, str]] = []
    for v in ctx.victims:
        # filters and robust training retrain the main victim only; a further victim (victim.seeds,
        # a transfer student) gets the defenses that act on a trained model alone
        chosen = ctx.defenses if v.filterable else [
            (n, c) for n, c in ctx.defenses if "retrain" not in DEFENSES.get(getattr(c, "name", n)).needs]
        if not chosen:
            continue
        defended = run_defenses(chosen, v.trained.model, ctx.val, ctx.test, ctx.evaluation, evaluate,
                                ctx.cfg.seed, ctx.device, {**v.metrics, "peak_rss_mb": peak_rss_mb()}, ctx.folder,
                                attack_label=v.label, context=filter_context(ctx) if v.filterable else None)
        if defended.metrics:
            (ctx.metrics if v.key == "victim" else v.metrics)["defenses"] = defended.metrics
            rows += defended.rows
    if rows:
        table = defense_table(rows)
        ctx.folder.write_text("tables/defenses.md", report.to_markdown(table, f"{ctx.cfg.name}: attack x defense"))
        ctx.folder.write_text("tables/defenses.csv", report.to_csv(table))


def finish(ctx: Context) -> None:
    """Optional steps that read the defended results (the transfer students)."""
    run_stage(ctx, "finish")


STEPS: tuple[Callable[[Context], None], ...] = (fit_reference, poison, fit_victim, measure, analyse, defend, finish)
"""The steps run inside the run folder, after :func:`prepare` and :func:`load`."""
