"""The subpopulation sweep: one retraining per (subpopulation, alpha), in parallel.

For each subpopulation and each alpha (Jagielski et al., CCS 2021, Sec. 4.2 and 5): add
round(alpha * n) label-flipped copies of the attacker's n rows of that subpopulation to the
victim's clean training set D, train A(D ∪ D_p), and compare its test predictions with the
clean model A(D)'s: target damage on the subpopulation's test rows, collateral on the
others (:mod:`poisonlab.subpop.metrics`).

The clean model, the attacker's rows and the memberships are computed once by the caller
and handed to the workers by ``fork`` (copy-on-write, nothing pickled per task); each task
seeds its own poison draw and training from (seed, subpopulation index, alpha index), so a
parallel sweep returns exactly the serial sweep's numbers, in the same order.

With ``defenses`` (registered defenses, :mod:`poisonlab.subpop.defended`), each task also runs
every defense the way the BadNets experiment does, ``spec.run(cfg, ctx)`` with the task's
:class:`~poisonlab.defenses.registry.DefenseInputs` (:func:`task_inputs`), and adds
``"{label}:target"``, ``":collateral"``, ``":clean_accuracy"``, ``":poisons_removed"`` and
``":clean_removed"`` to its result, measured against the same clean predictions A(D)
(removed shares NaN for the defenses that drop no row). ``certified`` also adds
``":certified_accuracy"`` (subpopulation test rows right and certified at r = n_poison flipped
labels) and ``":target_vs_smoothed_clean"``; a pruning defense adds ``":units_pruned"``.
The needs of every defense are checked before the first task (:func:`check_defense_needs`).
Defenses are deterministic given the task's seed and their thresholds are fixed parameters
(no test row is read to choose them; fine-pruning reads the clean validation split ``val``).
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from .. import progress
from ..data.base import Dataset
from ..defenses.registry import (
    ConfiguredDefense,
    DefenseInputs,
    check_needs,
    offered_by,
)
from ..defenses.robust_defenses import SmoothedRidgeClassifier, fit_smoothed_ridge
from ..errors import PoisonlabError
from .learners import LearnerSpec, build, fit_victim, predictions
from .metrics import accuracy_on, collateral, target_damage
from .poisons import label_flip_poisons


@dataclass
class SweepInputs:
    """Everything a retraining needs, shared by all tasks."""

    spec: LearnerSpec
    victim: Dataset              # D, the victim's clean training rows (tensor features; without ``val``)
    attacker: Dataset            # the attacker's rows (tensor features)
    test: Dataset
    pretrained: nn.Module | None  # the clean model the transfer / fine-tune modes continue
    clean_pred: np.ndarray       # A(D) on the test set
    attacker_members: list[np.ndarray]  # per subpopulation: attacker rows (bool)
    test_members: list[np.ndarray]      # per subpopulation: test rows (bool)
    labels: list[int]            # per subpopulation: the poison label
    alphas: list[float]
    seed: int
    defenses: list[ConfiguredDefense] = field(default_factory=list)  # run in every task after the undefended fit
    val: Dataset | None = None   # the clean validation split carved from D (fine-pruning and the validation rules decide on it)
    # per certified defense label: the smoothed classifier trained on clean D, on the test set (run_sweep fills it)
    smoothed_clean: dict[str, np.ndarray] = field(default_factory=dict)


_SHARED: SweepInputs | None = None


def run_task(i: int, j: int) -> dict[str, Any]:
    """Subpopulation ``i`` at alpha ``j``: poison, retrain, measure (reads the shared inputs)."""
    s = _SHARED
    assert s is not None, "run_task called outside a sweep"
    start = time.perf_counter()
    rows = np.flatnonzero(s.attacker_members[i])
    rng = np.random.default_rng([s.seed, i, j, 0x5B])
    x_p, y_p, _ = label_flip_poisons(s.attacker.x[rows], s.alphas[j], s.labels[i], rng, s.test.num_classes)
    poisoned = Dataset(torch.cat([s.victim.x, x_p]), torch.cat([s.victim.y, y_p]), list(s.victim.classes))
    model = fit_victim(s.spec, s.pretrained, poisoned, s.seed)
    pred = predictions(model, s.test.x)
    y = s.test.y.numpy()
    member = s.test_members[i]
    out: dict[str, Any] = {
        "index": i, "alpha": s.alphas[j], "n_poison": len(y_p), "label": s.labels[i],
        "target": target_damage(s.clean_pred, pred, y, member),
        "collateral": collateral(s.clean_pred, pred, y, member),
        "subpop_accuracy_before": accuracy_on(s.clean_pred, y, member),
        "subpop_accuracy_after": accuracy_on(pred, y, member),
        "clean_accuracy_after": float((pred == y).mean())}
    n_clean = len(s.victim)
    if s.defenses:
        mask = torch.zeros(len(poisoned), dtype=torch.bool)
        mask[n_clean:] = True
        ctx = task_inputs(s, poisoned, mask, model)
    for d in s.defenses:
        outcome = d.run(ctx)
        defended, remove = outcome.model, outcome.removed
        pred_d = _predict(defended, s.test.x)
        extra: dict[str, Any] = {}
        if isinstance(defended, SmoothedRidgeClassifier):  # the certified defense's own report
            labels, certified = defended.ridge.certify(_flat(s.test.x[torch.from_numpy(member)]), len(y_p))
            extra = {"certified_accuracy": float(np.mean((labels == y[member]) & certified)) if member.any()
                     else float("nan"),
                     "target_vs_smoothed_clean": target_damage(s.smoothed_clean[d.label], pred_d, y, member)}
        if outcome.curve is not None:  # pruning: the hidden units pruned
            extra["units_pruned"] = outcome.curve.n_pruned
        nan = float("nan")
        out.update({f"{d.label}:target": target_damage(s.clean_pred, pred_d, y, member),
                    f"{d.label}:collateral": collateral(s.clean_pred, pred_d, y, member),
                    f"{d.label}:clean_accuracy": float((pred_d == y).mean()),
                    f"{d.label}:poisons_removed": float(remove[n_clean:].mean()) if remove is not None and len(y_p)
                    else nan,
                    f"{d.label}:clean_removed": float(remove[:n_clean].mean()) if remove is not None else nan,
                    **{f"{d.label}:{k}": v for k, v in extra.items()}})
    out["seconds"] = time.perf_counter() - start
    return out


def task_inputs(s: SweepInputs, poisoned: Dataset, poison_mask: torch.Tensor, model: nn.Module) -> DefenseInputs:
    """What every defense gets in a task: the undefended victim, D ∪ D_p and its poison rows,
    the task's learner on a row subset as ``retrain``, the clean validation split. No test
    data: the sweep measures the defended model itself."""
    def retrain(data: Dataset, name: str) -> nn.Module:
        return fit_victim(s.spec, s.pretrained, data, s.seed)

    return DefenseInputs(poisoned, poison_mask, retrain, None, s.val, model=model, seed=s.seed, device="cpu")


def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Predicted classes; the smoothed ridge predicts all rows at once (its own float64 scores)."""
    if isinstance(model, SmoothedRidgeClassifier):
        return model.predict_rows(x)
    return predictions(model, x)


def _flat(x: torch.Tensor) -> np.ndarray:
    """Rows of ``x`` flattened to float64 features (the certified defense's input)."""
    return x.reshape(len(x), -1).double().numpy()


def check_defense_needs(inputs: SweepInputs) -> None:
    """One-line error naming the first defense whose needs the sweep does not offer (before any task)."""
    if not inputs.defenses:
        return
    state = torch.get_rng_state(), np.random.get_state()
    try:  # an untrained learner of the task's kind (its seeding must not move the tasks' draws)
        model = build(inputs.spec, inputs.victim, inputs.seed)
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
    ctx = DefenseInputs(inputs.victim, None, lambda data, name: model, None, inputs.val, model=model)
    offered = offered_by(ctx)
    for d in inputs.defenses:
        check_needs(d.spec, offered, d.cfg, d.label)


def _with_references(inputs: SweepInputs) -> SweepInputs:
    """``inputs`` with each certified defense's clean-D predictions (computed once, before any task)."""
    missing = [d for d in inputs.defenses if d.name == "certified" and d.label not in inputs.smoothed_clean]
    if not missing:
        return inputs
    refs = dict(inputs.smoothed_clean)
    for d in missing:
        refs[d.label] = fit_smoothed_ridge(d.cfg, inputs.victim).predict(_flat(inputs.test.x))
    return dataclasses.replace(inputs, smoothed_clean=refs)


def _init_worker() -> None:
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy / scikit-learn BLAS too: one thread per task, workers share the cores
    progress.set_enabled(False)


def run_sweep(inputs: SweepInputs, workers: int = 1) -> list[dict[str, Any]]:
    """Every (subpopulation, alpha) task; ``workers > 1`` forks that many processes.

    Results come back ordered by (subpopulation, alpha) whatever the completion order.
    """
    global _SHARED
    if workers < 1:
        raise PoisonlabError(f"workers must be >= 1, got {workers}")
    tasks = [(i, j) for i in range(len(inputs.labels)) for j in range(len(inputs.alphas))]
    if not tasks:
        raise PoisonlabError("no subpopulation to attack: widen the size bounds or lower min_test")
    check_defense_needs(inputs)
    _SHARED = _with_references(inputs)
    results: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        with progress.bar("subpopulation retrainings", len(tasks), unit="fit") as bar:
            if workers == 1 or len(tasks) == 1:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # as in the workers: CPU sums can depend on the thread count
                try:
                    with threadpool_limits(1):
                        for i, j in tasks:
                            results[(i, j)] = run_task(i, j)
                            bar.advance(1)
                finally:
                    torch.set_num_threads(threads)
            else:
                if "fork" not in mp.get_all_start_methods():
                    raise PoisonlabError("parallel sweeps need the 'fork' start method (Linux, macOS); set workers: 1")
                ctx = mp.get_context("fork")
                with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                         initializer=_init_worker) as pool:
                    futures = {pool.submit(run_task, i, j): (i, j) for i, j in tasks}
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.advance(1)
    finally:
        _SHARED = None
    return [results[t] for t in tasks]


def default_workers() -> int:
    """One worker per available CPU core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
