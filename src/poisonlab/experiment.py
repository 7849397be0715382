"""One experiment, end to end: data -> attack -> train (BadNet and clean baseline) -> metrics -> run folder.

Both models are trained the same way from the same seed on the same clean training
rows (the validation split is carved first, from clean training data); the BadNet's
training set additionally holds the attack's poison rows. The clean baseline is cached
(:mod:`poisonlab.baseline_cache`, keyed by the data, settings and code that determine it)
so that a grid of attacks trains it once.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, baseline_cache, report
from .analysis import (
    backdoor_neuron_rows,
    channel_activation_stats,
    flag_backdoor_channels,
    plot_backdoor_neurons,
)
from .attacks import AttackTestSet, build_attack
from .attacks.pruning_aware import pruning_aware_backdoor, pruning_aware_config
from .config import ExperimentConfig, config_hash
from .data import load_dataset
from .data.base import Dataset
from .data.splits import carve_validation, limit_rows
from .defend import check_defenses, run_defenses
from .defenses import FilterContext, RejectingClassifier
from .defenses.pruning import resolve_layer
from .errors import PoisonlabError
from .metrics import (
    accuracy,
    confusion_matrix,
    mean_class_error,
    per_class_error,
)
from .models import build_model
from .models.layers import conv_layers
from .provenance import provenance
from .resources import peak_cuda_mb, peak_rss_mb, timed
from .run_outputs import summarize, write_outputs
from .store import RunFolder, open_run, prepare_root, record_run, save_weights
from .traffic_report import (
    grouped_accuracy,
    grouped_backdoor,
    plot_traffic_table,
    traffic_table,
)
from .train import TrainResult, predict, resolve_device, seed_everything, train_model
from .transfer import conv_layer
from .transfer_run import plot_transfer, prepare_task, run_transfer, transfer_table


@dataclass
class TrainedModel:
    """A trained network with how it was trained."""

    model: nn.Module
    result: TrainResult
    cached: bool = False


@dataclass
class RunOutcome:
    """What a run produced: its folder, metrics and the seed table."""

    run_id: str
    path: Path
    metrics: dict[str, Any]
    table: list[dict[str, str]]
    extra_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _baseline_key(cfg: ExperimentConfig, train: Dataset, val: Dataset | None, device: torch.device | str) -> str:
    """What determines the clean baseline (:func:`poisonlab.baseline_cache.baseline_key`): the data
    actually trained and validated on, model, training, seed, code and, with a ``transfer:``
    section, the teacher's share of the training set (it trains on that part only)."""
    what = {"data": {k: v for k, v in vars(cfg.data).items() if k != "dir"},
            "model": vars(cfg.model), "train": vars(cfg.train), "seed": cfg.seed}
    if cfg.transfer is not None:
        what["teacher_fraction"] = cfg.transfer.teacher_fraction
    return baseline_cache.baseline_key(what, train, val, device)


def train_one(cfg: ExperimentConfig, train: Dataset, val: Dataset | None, device: torch.device,
              desc: str) -> TrainedModel:
    """Build the configured model from the run's seed and train it on ``train``."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, tuple(train.x.shape[1:]), train.num_classes, cfg.model.options)
    result = train_model(model, train, cfg.train, seed=cfg.seed, device=device, val=val, desc=desc)
    return TrainedModel(model.cpu(), result)


def train_baseline(cfg: ExperimentConfig, train: Dataset, val: Dataset | None, device: torch.device) -> TrainedModel:
    """The clean baseline, loaded from the cache when an identical one was trained before (a
    damaged, non-finite or mismatched entry is a miss: trained again and rewritten)."""
    cache = Path(cfg.output.dir) / baseline_cache.CACHE_DIR
    key = _baseline_key(cfg, train, val, device)
    if cfg.output.cache_baseline:
        model = build_model(cfg.model.name, tuple(train.x.shape[1:]), train.num_classes, cfg.model.options)
        meta = baseline_cache.load(cache, key, model)
        if meta is not None:
            model.eval()
            return TrainedModel(model, meta, cached=True)
    trained = train_one(cfg, train, val, device, "baseline")
    if cfg.output.cache_baseline:
        baseline_cache.save(cache, key, trained.model, trained.result)
    return trained


def evaluate(model: nn.Module, test: Dataset, attack_set: AttackTestSet | None, cfg: ExperimentConfig,
             device: torch.device, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Clean and backdoor metrics of one model; also returns its predictions.

    A :class:`~poisonlab.defenses.RejectingClassifier` (a detector defense such as STRIP) answers
    class ``num_classes`` for an input it refuses: a refused clean input counts as an error, a
    refused triggered input as a failed attack; the confusion matrices count answered inputs
    only, and ``clean_rejected_rate`` / ``triggered_rejected_rate`` give the shares refused.
    """
    c = test.num_classes
    rejects = isinstance(model, RejectingClassifier)
    start = time.perf_counter()
    pred_clean = predict(model, test.x, cfg.train.eval_batch_size, device, desc=f"{name} clean test")
    answered = pred_clean < c
    out: dict[str, Any] = {
        "clean_accuracy": accuracy(pred_clean, test.y),
        "clean_error": 1 - accuracy(pred_clean, test.y),
        "per_class_clean_error": per_class_error(pred_clean, test.y, test.y, c).tolist(),
        "confusion_clean": confusion_matrix(pred_clean[answered], test.y[answered], c).tolist(),
    }
    if rejects:
        out["clean_rejected_rate"] = float((~answered).float().mean()) if len(answered) else float("nan")
    preds = {"clean": pred_clean}
    if attack_set is not None and len(attack_set.x):
        pred_bd = predict(model, attack_set.x, cfg.train.eval_batch_size, device, desc=f"{name} triggered test")
        answered_bd = pred_bd < c
        success = attack_set.success(pred_bd) & answered_bd  # a refused input defeats the attack
        if rejects:
            out["triggered_rejected_rate"] = float((~answered_bd).float().mean())
        # backdoor error per true class = share of that class's triggered images where the attack failed
        per_class = per_class_error(success.long(), attack_set.true, torch.ones_like(attack_set.true), c)
        asr = float(success.float().mean())
        out.update({
            "attack_success_rate": asr,
            "backdoor_error": 1 - asr,
            "mean_class_backdoor_error": mean_class_error(per_class),
            "per_class_backdoor_error": per_class.tolist(),
            "confusion_triggered": confusion_matrix(pred_bd[answered_bd], attack_set.true[answered_bd], c).tolist(),
        })
        preds["triggered"] = pred_bd
    out["eval_seconds"] = time.perf_counter() - start
    return out, preds


def _model_metrics(trained: TrainedModel, evaluation: dict[str, Any]) -> dict[str, Any]:
    r = trained.result
    hist = r.history
    return {**evaluation, "train_seconds": r.seconds, "train_images_per_second": r.images_per_second,
            "chosen_epoch": r.chosen_epoch, "from_cache": trained.cached,
            "val_accuracy": hist[r.chosen_epoch - 1].get("val_acc") if hist and r.chosen_epoch else None,
            "history": hist}


def run_experiment(cfg: ExperimentConfig, quiet: bool = False) -> RunOutcome:
    """Run one configured experiment and write its run folder and index row.

    >>> from poisonlab.config import load_config
    >>> cfg = load_config(None, ["train.epochs=1", "output.dir=/tmp/pl-doctest", "output.plots=false",
    ...                          "attack={name: badnets, p: 0.1}"])
    >>> run_experiment(cfg, quiet=True).metrics["attack"]["n_poison"]
    121
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    attack = build_attack(cfg.attack) if cfg.attack is not None else None
    defenses = check_defenses(cfg.defenses)
    if defenses and attack is None:
        raise PoisonlabError("defenses need an attack to defend against; add an attack: section")
    pa_cfg = pruning_aware_config(cfg.pruning_aware, cfg.train) if cfg.pruning_aware is not None else None
    if pa_cfg is not None and attack is None:
        raise PoisonlabError("pruning_aware trains a backdoored model; add an attack: section (BadNets)")
    prepare_root(cfg.output.dir)  # a file, unwritable or damaged store fails before any data or training
    with timed(times, "load_seconds"):
        split = load_dataset(cfg.data.name, cfg.data.dir, cfg.data.download)
    train_all = limit_rows(split.train, cfg.data.train_limit, cfg.seed)
    train, val = carve_validation(train_all, cfg.data.val_fraction, cfg.seed)
    test = split.test
    if (defenses or pa_cfg is not None) and val is None:
        raise PoisonlabError("defenses and the pruning-aware attack decide on a clean validation split; "
                             "set data.val_fraction > 0")
    check_layer_names(cfg, tuple(train.x.shape[1:]), train.num_classes)
    task = prepare_task(cfg.transfer, train, val, test, cfg.seed) if cfg.transfer is not None else None
    if task is not None:
        train = task.teacher_train  # the teacher (U.S. network) never sees the student's images
    poison = None
    if attack is not None:
        attack.check(train)
        poison = attack.poison(train, np.random.default_rng([cfg.seed, 0xBAD]))
    resolved = cfg.to_dict()
    chash = experiment_hash(resolved)
    with open_run(cfg.output.dir, cfg.name, chash) as folder:
        baseline = train_baseline(cfg, train, val, device)
        badnet = train_one(cfg, poison.dataset, val, device, "badnet") if poison is not None else None
        attack_set = attack.evaluation_set(test) if attack is not None else None
        base_eval, base_preds = evaluate(baseline.model, test, attack_set, cfg, device, "baseline")
        metrics: dict[str, Any] = {
            "name": cfg.name, "version": __version__, "seed": cfg.seed, "device": str(device),
            "config_hash": chash, "provenance": provenance(split),
            "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),  # CPU sums (so the last digits) can depend on it
            "data": {"name": cfg.data.name, "train": len(train), "validation": len(val) if val else 0,
                     "student_train": len(task.student_train) if task else None,
                     "test": len(test), "classes": test.num_classes, "shape": list(test.x.shape[1:])},
            "baseline": _model_metrics(baseline, base_eval),
        }
        bad_preds: dict[str, torch.Tensor] = {}
        if attack is not None and badnet is not None and poison is not None and attack_set is not None:
            bad_eval, bad_preds = evaluate(badnet.model, test, attack_set, cfg, device, "badnet")
            metrics["attack"] = {**attack.describe(), "n_poison": poison.n_poison,
                                 "train_size_poisoned": len(poison.dataset), "test_triggered": len(attack_set.x)}
            metrics["badnet"] = _model_metrics(badnet, bad_eval)
            metrics["clean_error_increase"] = bad_eval["clean_error"] - base_eval["clean_error"]
            groups = traffic_sign_groups(cfg, attack, badnet.model, test, base_preds["clean"], bad_preds["clean"],
                                         device)
            if groups is not None:
                metrics["traffic_groups"] = groups
                name = groups["trigger"]
                nets = {name: (groups["badnet_clean"], groups["badnet_backdoor"])}
                folder.write_text("tables/traffic_groups.md", report.to_markdown(
                    traffic_table(groups["baseline_clean"], nets), f"{cfg.name}: by sign type"))
                folder.write_text("tables/traffic_groups.csv", report.to_csv(traffic_table(groups["baseline_clean"], nets)))
                if cfg.output.plots:
                    plot_traffic_table(folder.file("plots", "traffic_groups.png"), groups["baseline_clean"], nets)
            neurons = backdoor_neuron_analysis(cfg, badnet.model, attack, val, folder)
            if neurons is not None:
                metrics["backdoor_neurons"] = neurons
            victims = [("BadNet", badnet.model, bad_eval, metrics)]
            if pa_cfg is not None:
                with timed(times, "pruning_aware_seconds"):
                    pa_model, pa_info = pruning_aware_backdoor(
                        lambda: build_model(cfg.model.name, tuple(train.x.shape[1:]), train.num_classes,
                                            cfg.model.options),
                        train, poison.dataset, val, pa_cfg.layer, pa_cfg, cfg.seed, device,
                        clean_model=baseline.model)
                pa_eval, _ = evaluate(pa_model, test, attack_set, cfg, device, "pruning-aware")
                pa_trained = TrainedModel(pa_model.cpu(), TrainResult(pa_info["poison_history"],
                                                                      len(pa_info["poison_history"]),
                                                                      times["pruning_aware_seconds"]))
                metrics["pruning_aware"] = {**_model_metrics(pa_trained, pa_eval),
                                            **{k: v for k, v in pa_info.items() if "history" not in k}}
                victims.append(("pruning-aware BadNet", pa_model, pa_eval, metrics["pruning_aware"]))
                if cfg.output.save_weights:
                    save_weights(pa_model, folder.file("weights", "pruning_aware.safetensors"))
            rows: list[dict[str, str]] = []
            target = (cfg.attack or {}).get("target", 0) if (cfg.attack or {}).get("labels", "single-target") \
                == "single-target" else None
            context = FilterContext(poison.dataset, poison.poison_mask,
                                    lambda ds, name: train_one(cfg, ds, val, device, f"retrain ({name})").model, target,
                                    val)
            for label, model, undefended, where in victims:
                defended = run_defenses(
                    defenses, model, val, test, attack_set,
                    lambda m, name: evaluate(m, test, attack_set, cfg, device, name)[0],
                    cfg.seed, device, {**undefended, "peak_rss_mb": peak_rss_mb()}, folder, attack_label=label,
                    context=context if label == "BadNet" else None)
                if defended.metrics:
                    where["defenses"] = defended.metrics
                    rows += defended.rows
            if rows:
                folder.write_text("tables/defenses.md", report.to_markdown(rows, f"{cfg.name}: attack x defense"))
                folder.write_text("tables/defenses.csv", report.to_csv(rows))
        if task is not None and cfg.transfer is not None:
            with timed(times, "transfer_seconds"):
                neurons = metrics.get("backdoor_neurons") or {}
                metrics["transfer"] = run_transfer(
                    cfg.transfer, cfg.train, task, baseline.model, badnet.model if badnet else None,
                    attack.trigger if attack is not None else None,
                    cfg.transfer.strengthen_layer or neurons.get("layer") or _last_conv(baseline.model),
                    neurons.get("flagged"), neurons.get("ranking"), cfg.seed, device)
            table = transfer_table(metrics["transfer"])
            folder.write_text("tables/transfer.md", report.to_markdown(table, f"{cfg.name}: transfer ({cfg.transfer.mode})"))
            folder.write_text("tables/transfer.csv", report.to_csv(table))
            if cfg.output.plots:
                plot_transfer(folder.file("plots", "transfer.png"), metrics["transfer"])
        times["total_seconds"] = time.perf_counter() - start
        metrics["time"] = times
        metrics["peak_memory_mb"] = {"rss": peak_rss_mb(), "cuda": peak_cuda_mb()}
        table = write_outputs(folder, cfg, resolved, metrics, test, attack_set, baseline.model,
                              badnet.model if badnet else None, bad_preds)
    record_run(cfg.output.dir, {
        "id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "name": cfg.name,
        "dataset": cfg.data.name, "model": cfg.model.name, "attack": (cfg.attack or {}).get("name", "none"),
        "config_hash": chash, "seed": cfg.seed, "version": __version__, "path": str(folder.path.resolve()),
        "summary": summarize(metrics), "metrics": metrics,
    })
    return RunOutcome(folder.run_id, folder.path, metrics, table)


def check_layer_names(cfg: ExperimentConfig, shape: tuple[int, ...], num_classes: int) -> None:
    """Fail before any training when a configured layer name does not exist in the model."""
    model = build_model(cfg.model.name, shape, num_classes, cfg.model.options)
    if cfg.attack is not None and cfg.analysis.backdoor_neurons and cfg.analysis.layer is not None:
        conv_layer(model, cfg.analysis.layer)
    if cfg.transfer is not None and cfg.transfer.strengthen_layer is not None:
        conv_layer(model, cfg.transfer.strengthen_layer)
    if cfg.pruning_aware is not None:
        resolve_layer(model, cfg.pruning_aware.get("layer"))


def _last_conv(model: nn.Module) -> str | None:
    convs = conv_layers(model)
    return convs[-1] if convs else None


def trigger_label(trigger_cfg: dict[str, Any]) -> str:
    """A short name for a trigger in tables: the icon's name, else its kind (``patch`` -> ``square``)."""
    kind = str(trigger_cfg.get("kind", "trigger"))
    return str(trigger_cfg.get("icon") or {"patch": "square"}.get(kind, kind))


def traffic_sign_groups(cfg: ExperimentConfig, attack: Any, model: nn.Module, test: Dataset,
                        base_pred: torch.Tensor, bad_pred: torch.Tensor,
                        device: torch.device) -> dict[str, Any] | None:
    """BadNets Sec. 4 table (stop, speed limit, warning, other) for a single-source, single-target
    attack on the 43-class GTSRB; None for any other experiment. The BadNet's backdoor column comes
    from every test image with the trigger stamped (:func:`poisonlab.traffic_report.grouped_backdoor`)."""
    a = cfg.attack or {}
    source = a.get("source")
    if cfg.data.name != "gtsrb" or test.num_classes != 43 or a.get("labels", "single-target") != "single-target" \
            or not isinstance(source, int) or isinstance(source, bool):
        return None
    triggered = predict(model, attack.trigger.apply(test.x), cfg.train.eval_batch_size, device,
                        desc="badnet, every test image triggered")
    return {"trigger": trigger_label(a.get("trigger") or {}), "source": source, "target": a.get("target", 0),
            "baseline_clean": grouped_accuracy(base_pred, test.y),
            "badnet_clean": grouped_accuracy(bad_pred, test.y),
            "badnet_backdoor": grouped_backdoor(triggered, test.y, source, int(a.get("target", 0)))}


def backdoor_neuron_analysis(cfg: ExperimentConfig, model: nn.Module, attack: Any, val: Dataset | None,
                             folder: RunFolder) -> dict[str, Any] | None:
    """Backdoor neurons of the BadNet (BadNets Sec. 5.3) on the validation split: mean activation per
    channel of a conv layer on the attacked classes' clean images vs the same images triggered; a CSV
    table and a plot in the run folder. None for models without convolutions or no attacked rows."""
    a = cfg.analysis
    if not a.backdoor_neurons or val is None or _last_conv(model) is None:
        return None
    pairs = attack.evaluation_set(val)
    if len(pairs.x) == 0:
        return None
    stats = channel_activation_stats(model, a.layer, val.x[pairs.rows], pairs.x, cfg.train.eval_batch_size)
    flagged = flag_backdoor_channels(stats, a.z, a.clean_quantile)
    rows = backdoor_neuron_rows(stats, flagged)
    folder.write_text("tables/backdoor_neurons.csv", report.to_csv(rows))
    if cfg.output.plots:
        plot_backdoor_neurons(folder.file("plots", "backdoor_neurons.png"), stats, flagged)
    return {"layer": stats.layer, "read_at": stats.read_at, "images": stats.n_clean, "flagged": flagged,
            "ranking": [int(c) for c in stats.ranking], "clean_mean": stats.clean_mean.tolist(),
            "triggered_mean": stats.triggered_mean.tolist()}


def experiment_hash(resolved: dict[str, Any]) -> str:
    """Hash of what determines the results: the config less where files are read from and written to."""
    what = {k: v for k, v in resolved.items() if k != "output"}
    what["data"] = {k: v for k, v in resolved["data"].items() if k != "dir"}
    return config_hash(what)
