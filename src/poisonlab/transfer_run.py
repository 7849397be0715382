"""The transfer-learning experiment of BadNets (Gu, Dolan-Gavitt & Garg 2017, Sec. 5).

A user downloads a (possibly backdoored) U.S. traffic-sign network and retrains it for
Swedish signs. Here the teacher is the experiment's clean baseline or its BadNet, trained
on one part of the training set; each student is built from a teacher
(:func:`poisonlab.transfer.build_student`) and trained on the other part, relabelled for
the new task (:func:`prepare_task`: GTSRB regrouped into the Swedish categories, or the
same classes). Every student is measured on the new task's test set, clean and with the
trigger stamped on *every* image (true labels kept): the paper's "backdoor" accuracy, which
a surviving backdoor drags down (Table 6: 72.7% clean for the baseline student, 74.9% clean
and 61.6% backdoored for the BadNet student). Backdoor strengthening (Sec. 5.3, Table 7)
adds one BadNet student per factor k, built from a teacher whose backdoor neurons' input
weights are multiplied by k (:func:`poisonlab.transfer.strengthen`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import report
from .data.base import Dataset
from .data.gtsrb_groups import disjoint_split, regroup
from .errors import PoisonlabError
from .metrics import accuracy, per_class_error
from .train import TrainConfig, predict
from .transfer import TransferConfig, strengthen, train_student
from .triggers import Trigger


@dataclass
class TransferData:
    """The teacher's training part and the student's task (train, validation, test)."""

    teacher_train: Dataset
    student_train: Dataset
    student_val: Dataset | None
    student_test: Dataset


def prepare_task(cfg: TransferConfig, train: Dataset, val: Dataset | None, test: Dataset, seed: int) -> TransferData:
    """Split ``train`` into disjoint teacher and student parts and map the student's data to the new task."""
    if cfg.task == "swedish" and train.num_classes != 43:
        raise PoisonlabError(f"transfer.task 'swedish' regroups the 43 GTSRB classes, but this data set has "
                             f"{train.num_classes} classes; use data.name gtsrb or transfer.task: same")
    teacher, student = disjoint_split(train, cfg.teacher_fraction, seed)
    if cfg.task == "swedish":
        return TransferData(teacher, regroup(student), regroup(val) if val is not None else None, regroup(test))
    return TransferData(teacher, student, val, test)


@dataclass
class StudentResult:
    """One student: which teacher, k, and its clean and triggered accuracies per class."""

    name: str
    teacher: str
    k: float | None
    clean_accuracy: float
    backdoor_accuracy: float
    per_class_clean: list[float]
    per_class_backdoor: list[float]
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return dict(vars(self))


def evaluate_student(model: nn.Module, test: Dataset, triggered_x: torch.Tensor, batch_size: int,
                     device: torch.device | str) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Clean and backdoored accuracy (overall and per class) on the new task's test set."""
    pred = predict(model, test.x, batch_size, device, desc="student clean test")
    pred_bd = predict(model, triggered_x, batch_size, device, desc="student triggered test")
    c = test.num_classes
    return (accuracy(pred, test.y), accuracy(pred_bd, test.y),
            1 - per_class_error(pred, test.y, test.y, c), 1 - per_class_error(pred_bd, test.y, test.y, c))


FALLBACK_CHANNELS = 3
"""How many top-ranked channels are strengthened when the analysis flags none (BadNets Sec. 5.3
name three groups of backdoor neurons; a local trigger's effect on a channel's spatial mean is
often too small for the flagging rule)."""


def strengthening_channels(cfg: TransferConfig, flagged: list[int] | None, ranking: list[int] | None) -> tuple[list[int], str]:
    """Channels to strengthen: the configured ones, else the flagged backdoor neurons, else the
    :data:`FALLBACK_CHANNELS` channels whose mean activation rises most on triggered images."""
    if cfg.strengthen_channels is not None:
        return list(cfg.strengthen_channels), "configured"
    if flagged:
        return list(flagged), "flagged backdoor neurons"
    if ranking:
        return [int(c) for c in ranking[:FALLBACK_CHANNELS]], f"top-{FALLBACK_CHANNELS} ranked channels (none flagged)"
    raise PoisonlabError("backdoor strengthening needs channels: set transfer.strengthen_channels or keep "
                         "analysis.backdoor_neurons on")


def run_transfer(cfg: TransferConfig, base_train: TrainConfig, data: TransferData, clean_teacher: nn.Module,
                 bad_teacher: nn.Module | None, trigger: Trigger | None, layer: str | None, flagged: list[int] | None,
                 ranking: list[int] | None, seed: int, device: torch.device | str) -> dict[str, Any]:
    """Train every student (clean teacher; BadNet teacher for each k) and measure it."""
    test = data.student_test
    triggered_x = trigger.apply(test.x) if trigger is not None else test.x
    teachers: list[tuple[str, str, float | None, nn.Module]] = [("clean teacher", "clean", None, clean_teacher)]
    channels: list[int] = []
    how = ""
    if bad_teacher is not None:
        if any(k != 1 for k in cfg.strengthen_k):
            channels, how = strengthening_channels(cfg, flagged, ranking)
        for k in cfg.strengthen_k:
            model = bad_teacher if k == 1 else strengthen(bad_teacher, layer or "", channels, k)
            name = "BadNet teacher" if k == 1 else f"BadNet teacher, k={k:g}"
            teachers.append((name, "badnet", float(k), model))
    students: list[StudentResult] = []
    for name, kind, k, teacher in teachers:
        start = time.perf_counter()
        student, result = train_student(teacher, data.student_train, cfg, base_train, seed, device, data.student_val)
        seconds = time.perf_counter() - start
        clean, backdoor, pc_clean, pc_bd = evaluate_student(student, test, triggered_x, base_train.eval_batch_size, device)
        students.append(StudentResult(name, kind, k, clean, backdoor, pc_clean.tolist(), pc_bd.tolist(), seconds,
                                      result.history))
    return {"mode": cfg.mode, "task": cfg.task, "classes": list(test.classes),
            "teacher_train": len(data.teacher_train), "student_train": len(data.student_train),
            "student_test": len(test), "strengthen_layer": layer, "strengthen_channels": channels,
            "strengthen_channels_from": how, "students": [s.metrics() for s in students]}


def transfer_table(result: dict[str, Any]) -> report.Table:
    """BadNets Table 6/7 shape: one row per class of the new task and the average; per student,
    clean and backdoor accuracy (fractions, shown as percentages)."""
    students = result["students"]
    columns = [report.Column("class")]
    for s in students:
        columns += [report.Column(f"{s['name']}: clean", "pct"), report.Column(f"{s['name']}: backdoor", "pct")]
    rows = []
    for i, cls in enumerate(result["classes"]):
        row = {"class": cls}
        for s in students:
            row[f"{s['name']}: clean"] = s["per_class_clean"][i]
            row[f"{s['name']}: backdoor"] = s["per_class_backdoor"][i]
        rows.append(row)
    avg = {"class": "average (all test images)"}
    for s in students:
        avg[f"{s['name']}: clean"] = s["clean_accuracy"]
        avg[f"{s['name']}: backdoor"] = s["backdoor_accuracy"]
    rows.append(avg)
    return report.Table(rows, columns)


def plot_transfer(path: str | Path, result: dict[str, Any]) -> None:
    """Clean and backdoored accuracy of every student (grouped bars)."""
    plt = report.pyplot()
    students = result["students"]
    xs = np.arange(len(students))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(students) + 2), 3.4))
    ax.bar(xs - 0.2, [s["clean_accuracy"] for s in students], 0.4, label="clean images", color="tab:gray")
    ax.bar(xs + 0.2, [s["backdoor_accuracy"] for s in students], 0.4, label="triggered images", color="tab:red")
    ax.set_xticks(xs, [s["name"].replace(", ", "\n") for s in students], fontsize=8)
    ax.set_ylabel("student accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"transfer ({result['mode']}, task {result['task']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
