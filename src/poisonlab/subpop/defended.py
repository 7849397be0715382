"""Defenses against subpopulation poisoning, run inside the sweep (Jagielski et al., CCS 2021, Sec. 6).

The paper evaluates defenses against its attack and finds that none consistently lowers
target damage without raising collateral. This module lets a subpopulation experiment
repeat that check: an optional ``defenses:`` list in the config, each item
``{name: trim | sever | spectral-signatures | activation-clustering | certified | fine-pruning,
label?: str, ...params}``.

In each sweep task (subpopulation i, alpha j), after D ∪ D_p is built and the undefended
victim trained, every configured *row filter* decides which rows of D ∪ D_p to drop:

* ``trim`` (TRIM / ILTM, :func:`poisonlab.defenses.robust_training.trim`): keep the
  ``round((1 - epsilon) * n)`` rows of lowest cross-entropy, or ``round(keep_fraction * n)``
  when ``keep_fraction`` is given (half up); ``max_iters`` fit-and-trim rounds;
* ``sever`` (:func:`poisonlab.defenses.robust_training.sever`): ``rounds`` rounds, each
  removing ``remove_fraction`` of the kept rows by last-layer gradient outlier score;
* ``spectral-signatures`` (:func:`poisonlab.defenses.spectral.spectral_signatures`) and
  ``activation-clustering`` (:func:`poisonlab.defenses.activation_clustering.activation_clustering`):
  on the undefended victim's representations (``representations(model, x, "auto")``) of
  D ∪ D_p, grouped by the training labels.

Two more defenses give a defended model without dropping rows (their "poisons removed" and
"clean rows removed" are NaN: not a row filter):

* ``certified`` (Rosenfeld, Winston, Ravikumar, Kolter, ICML 2020, arXiv 2002.03018;
  :class:`poisonlab.defenses.certified.SmoothedRidge`): the defended model is ridge
  regression (penalty ``lam``, intercept column added, also penalised) on the *model input*
  (e.g. Adult's one-hot / standardised columns, flattened) of the task's D ∪ D_p, smoothed
  over label noise ``q``; binary labels only. Its predictions are the side of 1/2 of the
  expected score, a d-dimensional product per test row. Each task also records
  ``certified_accuracy``: the share of the subpopulation's test rows the smoothed classifier
  gets right *and* certifies against ``r = n_poison`` flipped training labels, and
  ``target_vs_smoothed_clean``: its target damage against the same smoothed classifier trained
  on clean D (the damage to the certified model itself; target / collateral, as for every
  defense, compare with the clean victim A(D), so they include the change of learner). **The
  certificate covers flipped labels of existing rows, while this attack adds rows** (with
  their own features), so ``certified_accuracy`` is a reference, not a guarantee against this
  attack. Once per experiment (:func:`certified_curve`) the clean-D classifier's certified
  accuracy against 0..``curve_max_r`` flips (default: the sweep's largest poison count) is
  measured on ``curve_rows`` test rows drawn with the seed (report only: nothing is chosen on it).
* ``fine-pruning`` (Liu, Dolan-Gavitt, Garg, RAID 2018; :mod:`poisonlab.defenses.pruning`,
  evaluated by Jagielski et al. Sec. 6): the undefended victim's last hidden layer (the
  ``nn.Linear`` before the output) loses its units in increasing order of mean activation on
  the clean **validation split** (``data.val_fraction``) until the validation accuracy would
  drop by more than ``max_drop``; the pruned victim is then fine-tuned on the validation split
  (``fine_tune_epochs`` of SGD, momentum 0.9, batch 128, learning rate ``fine_tune_lr``;
  0 epochs: pruning alone). Needs a model with a hidden layer.

``fit`` for TRIM and SEVER is the task's learner (:func:`~poisonlab.subpop.learners.fit_victim`,
same mode, same seed) on a row subset. The defended model is that learner retrained on the
kept rows; its target damage and collateral are measured against the *same* clean model
A(D) as the undefended numbers, so a table reads how far the defense lowers the damage and
what it costs.

**Thresholds are fixed parameters** (the config's values or the defaults below): no test
row is read to choose them; fine-pruning's stop and the ``validation`` rules of Spectral
Signatures and Activation Clustering read the clean validation split only. Every
defense is deterministic given the task's seed, so a parallel sweep still equals the serial one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..checks import is_number, is_whole
from ..data.base import Dataset
from ..errors import PoisonlabError, did_you_mean

if TYPE_CHECKING:
    from ..defenses.certified import SmoothedRidge

__all__ = ["DEFENSES", "NEEDS_VALIDATION", "DefenseSpec", "apply_defense", "certified_curve", "defense_rows",
           "defense_summary", "fine_prune_victim", "parse_defenses", "smoothed_ridge"]

# name -> {param: default}; None = not set (trim's keep_fraction: derived from epsilon)
DEFENSES: dict[str, dict[str, Any]] = {
    "trim": {"epsilon": 0.05, "keep_fraction": None, "max_iters": 5},
    "sever": {"remove_fraction": 0.01, "rounds": 4},
    "spectral-signatures": {"epsilon": 0.05, "removal_factor": 1.5, "rule": "budget", "false_removal_rate": 0.05},
    "activation-clustering": {"dims": 10, "reduce": "pca", "rule": "size", "size_threshold": 0.35,
                              "validation_ratio": 0.5,
                              "silhouette_threshold": 0.10},
    # curve_max_r None: the sweep's largest poison count
    "certified": {"q": 0.1, "lam": 1.0, "curve_rows": 200, "curve_max_r": None},
    "fine-pruning": {"max_drop": 0.04, "fine_tune_epochs": 10, "fine_tune_lr": 0.01},
}
#: defenses that decide on the clean validation split (``data.val_fraction > 0``)
NEEDS_VALIDATION = ("fine-pruning",)
METRICS = ("target", "collateral", "clean_accuracy", "poisons_removed", "clean_removed")


@dataclass
class DefenseSpec:
    """One configured defense: its ``name``, the ``label`` its result columns carry and its
    parameters (defaults filled in)."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The config item, defaults filled (TRIM's epsilon left out when keep_fraction rules)."""
        params = dict(self.params)
        if self.name == "trim" and params.get("keep_fraction") is not None:
            params.pop("epsilon")
        return {"name": self.name, "label": self.label, **params}


def _check_param(where: str, key: str, v: Any, name: str = "") -> Any:
    """The value of one parameter, checked; a one-line error otherwise."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise PoisonlabError(f"{where}.{key} must be {what}, got {v!r}")

    if key in ("epsilon", "remove_fraction"):
        need(is_number(v) and 0 < float(v) < 1, "a number in (0, 1)")
        return float(v)
    if key == "keep_fraction":
        need(v is None or (is_number(v) and 0 < float(v) <= 1), "a number in (0, 1] or null")
        return None if v is None else float(v)
    if key in ("max_iters", "rounds", "dims", "curve_rows"):
        need(is_whole(v) and v >= 1, "an integer >= 1")
        return int(v)
    if key == "q":
        need(is_number(v) and 0 < float(v) < 0.5, "a label-noise rate in (0, 0.5)")
        return float(v)
    if key in ("lam", "fine_tune_lr"):
        need(is_number(v) and float(v) > 0, "a number > 0")
        return float(v)
    if key == "curve_max_r":
        need(v is None or (is_whole(v) and v >= 0), "an integer >= 0 or null (the sweep's largest poison count)")
        return None if v is None else int(v)
    if key == "max_drop":
        need(is_number(v) and 0 <= float(v) < 1, "in [0, 1) (a drop in validation accuracy, 0.04 = 4 points)")
        return float(v)
    if key == "fine_tune_epochs":
        need(is_whole(v) and v >= 0, "an integer >= 0 (0: prune only)")
        return int(v)
    if key == "removal_factor":
        need(is_number(v) and float(v) > 0, "a number > 0")
        return float(v)
    if key == "size_threshold":
        need(is_number(v) and 0 < float(v) < 1, "a number in (0, 1)")
        return float(v)
    if key == "silhouette_threshold":
        need(is_number(v) and -1 <= float(v) <= 1, "a number in [-1, 1]")
        return float(v)
    if key == "reduce":
        need(v in ("pca", "ica"), "pca or ica" + did_you_mean(str(v), ["pca", "ica"]))
        return v
    if key == "rule":
        rules = ["budget", "validation"] if name == "spectral-signatures" else ["size", "silhouette", "validation"]
        need(v in rules, " or ".join(rules) + did_you_mean(str(v), rules))
        return v
    if key == "false_removal_rate":
        need(is_number(v) and 0 <= float(v) < 1, "a number in [0, 1) (the share of clean validation rows removed)")
        return float(v)
    if key == "validation_ratio":
        need(is_number(v) and 0 < float(v) <= 1, "a number in (0, 1]")
        return float(v)
    raise AssertionError(key)  # pragma: no cover - every key of DEFENSES is handled


def parse_defenses(raw: Any) -> list[DefenseSpec]:
    """The ``defenses:`` list as :class:`DefenseSpec` s, strictly validated (one-line errors:
    unknown names and keys with a did-you-mean hint, values out of range, labels used twice)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PoisonlabError(f"defenses must be a list of {{name: ..., ...}} mappings, got {raw!r}")
    specs: list[DefenseSpec] = []
    for i, item in enumerate(raw):
        where = f"defenses[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise PoisonlabError(f"{where} must be a mapping like {{name: trim}}, got {item!r}")
        name = item.get("name")
        if name is None:
            raise PoisonlabError(f"{where} needs a name: one of {', '.join(DEFENSES)}")
        if name not in DEFENSES:
            raise PoisonlabError(f"{where}.name: unknown defense {name!r}{did_you_mean(str(name), list(DEFENSES))}; "
                                 f"choose one of {', '.join(DEFENSES)}")
        allowed = ["name", "label", *DEFENSES[name]]
        for key in item:
            if key not in allowed:
                raise PoisonlabError(f"unknown key '{where}.{key}' for {name}{did_you_mean(str(key), allowed)}; "
                                     f"allowed: {', '.join(allowed)}")
        label = item.get("label", name)
        if label is None:
            label = name
        if not isinstance(label, str) or not label.strip() or label == "none" or ":" in label:
            raise PoisonlabError(f"{where}.label must be a non-empty string other than 'none' and without ':', "
                                 f"got {label!r}")
        if name == "trim" and "epsilon" in item and item.get("keep_fraction") is not None:
            raise PoisonlabError(f"{where}: give trim either epsilon or keep_fraction, not both")
        params = {key: _check_param(where, key, item.get(key, default), name)
                  for key, default in DEFENSES[name].items()}
        specs.append(DefenseSpec(name, label, params))
    labels = [s.label for s in specs]
    for lab in labels:
        if labels.count(lab) > 1:
            raise PoisonlabError(f"defenses: label {lab!r} is used twice; give each defense a distinct label")
    return specs


def trim_keep_count(params: dict[str, Any], n: int) -> int:
    """Rows TRIM keeps of ``n``: ``round(keep_fraction * n)`` or ``round((1 - epsilon) * n)``, half up, in 1..n."""
    share = params["keep_fraction"] if params.get("keep_fraction") is not None else 1.0 - params["epsilon"]
    return max(1, min(n, math.floor(share * n + 0.5 + 1e-9)))


def apply_defense(d: DefenseSpec, spec: Any, pretrained: nn.Module | None, poisoned: Dataset,
                  undefended: nn.Module, seed: int, val: Dataset | None = None) -> tuple[np.ndarray, nn.Module]:
    """``(remove, model)``: the rows of ``poisoned`` (D ∪ D_p) the defense drops (boolean mask)
    and the task's learner retrained on the kept rows (``undefended`` itself when none is
    dropped: the same fit on the same rows). ``val`` (the clean validation split) is read by
    the ``validation`` rules of Spectral Signatures and Activation Clustering only."""
    from ..defenses.activation_clustering import activation_clustering
    from ..defenses.filtering import representations
    from ..defenses.robust_training import (
        cross_entropy_losses,
        last_layer_gradient_fn,
        sever,
        trim,
    )
    from ..defenses.spectral import spectral_signatures
    from .learners import fit_victim

    def fit(idx: np.ndarray) -> nn.Module:
        return fit_victim(spec, pretrained, poisoned.subset(torch.as_tensor(idx, dtype=torch.int64)), seed)

    n = len(poisoned)
    p = d.params
    if d.name == "trim":
        res = trim(fit, cross_entropy_losses(poisoned), n, trim_keep_count(p, n), p["max_iters"])
        return res.removed, res.model
    if d.name == "sever":
        sres = sever(fit, last_layer_gradient_fn(poisoned), n, p["remove_fraction"], p["rounds"])
        return sres.removed, sres.model
    reps = representations(undefended, poisoned.x, "auto")
    labels = poisoned.y.numpy()
    val_reps = val_labels = None
    if p.get("rule") == "validation":
        if val is None or len(val) == 0:
            raise PoisonlabError(f"defense '{d.label}' with rule 'validation' reads the clean validation split; "
                                 f"set data.val_fraction > 0")
        val_reps, val_labels = representations(undefended, val.x, "auto"), val.y.numpy()
    if d.name == "spectral-signatures":
        remove = spectral_signatures(reps, labels, p["epsilon"], p["removal_factor"], p["rule"], val_reps, val_labels,
                                     p["false_removal_rate"]).remove
    elif d.name == "activation-clustering":
        remove = activation_clustering(reps, labels, p["dims"], p["reduce"], p["rule"], p["size_threshold"],
                                       p["silhouette_threshold"], seed, val_reps, val_labels,
                                       p["validation_ratio"]).remove
    else:  # pragma: no cover - parse_defenses rejects other names
        raise PoisonlabError(f"unknown defense {d.name!r}")
    if not remove.any():
        return remove, undefended
    return remove, fit(np.flatnonzero(~remove))


def smoothed_ridge(d: DefenseSpec, data: Dataset) -> SmoothedRidge:
    """The ``certified`` defense's classifier on ``data``: :class:`~poisonlab.defenses.certified.SmoothedRidge`
    (``q``, ``lam``, intercept) on the flattened model input; binary labels only."""
    from ..defenses.certified import SmoothedRidge

    check_binary(d, data.num_classes)
    x = data.x.reshape(len(data), -1).double().numpy()
    return SmoothedRidge(d.params["q"], d.params["lam"]).fit(x, data.y.numpy())


def check_binary(d: DefenseSpec, num_classes: int) -> None:
    """One-line error unless a ``certified`` defense meets a two-class data set."""
    if d.name == "certified" and num_classes != 2:
        raise PoisonlabError(f"defense '{d.label}' (certified) handles binary labels only; the data set has "
                             f"{num_classes} classes: remove it from defenses")


def fine_prune_victim(d: DefenseSpec, undefended: nn.Module, val: Dataset | None, seed: int) -> tuple[nn.Module, int]:
    """``(model, units pruned)``: a fine-pruned copy of ``undefended`` (Liu et al. 2018): its
    last hidden Linear layer pruned in increasing order of clean-validation mean activation
    while the validation accuracy stays within ``max_drop``, then fine-tuned on ``val``."""
    import copy

    from ..defenses.pruning import FinePruningConfig, fine_tune, pruning_curve

    if val is None or len(val) == 0:
        raise PoisonlabError(f"defense '{d.label}' (fine-pruning) needs a clean validation split; "
                             f"set data.val_fraction > 0 (e.g. 0.1)")
    p = d.params
    model = copy.deepcopy(undefended)
    curve = pruning_curve(model, None, val, step=1, max_drop=p["max_drop"], full_curve=False, kind="linear")
    curve.apply(model)
    if p["fine_tune_epochs"] > 0:
        cfg = FinePruningConfig(fine_tune_epochs=p["fine_tune_epochs"], fine_tune_lr=p["fine_tune_lr"])
        fine_tune(model, val, cfg.fine_tune_config(), seed)
    return model.eval(), curve.n_pruned


def certified_curve(d: DefenseSpec, clean: Dataset, test: Dataset, seed: int, max_r: int) -> dict[str, Any]:
    """The ``certified`` defense on clean D, once per experiment: certified accuracy against
    ``r = 0..max_r`` flipped training labels (Rosenfeld et al. 2020) on
    ``curve_rows`` test rows drawn with ``seed`` (a report: no choice is made on it), and the
    smoothed classifier's accuracy on the whole test set."""
    import time

    from ..defenses.certified import curve_from_radii

    start = time.perf_counter()
    model = smoothed_ridge(d, clean)
    y = test.y.numpy()
    accuracy = float((model.predict(test.x.reshape(len(test), -1).double().numpy()) == y).mean())
    n = min(d.params["curve_rows"], len(test))
    rows = np.sort(np.random.default_rng([seed, 0x43525456]).choice(len(test), n, replace=False))
    labels, radii = model.radii(test.x[torch.as_tensor(rows)].reshape(n, -1).double().numpy(), max_r)
    curve = curve_from_radii(labels == y[rows], radii, max_r)
    return {"q": d.params["q"], "lam": d.params["lam"], "rows": int(n), "max_r": int(max_r),
            "smoothed_clean_accuracy": accuracy, "curve": [[r, acc] for r, acc in curve],
            "seconds": time.perf_counter() - start}


def _nanmean(values: list[float]) -> float:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    return float(v.mean()) if len(v) else math.nan


def defense_summary(rows: list[dict[str, Any]], labels: list[str], k: int = 5) -> list[dict[str, Any]]:
    """One dict per (defense, alpha), "none" (undefended) first: ``target_worst_k`` = mean
    target damage of the k subpopulations worst *without* defense (target descending, ties
    by subpop_id; the same subpopulations for every defense), ``collateral_all``,
    ``clean_accuracy``, ``poisons_removed`` and ``clean_removed`` (means over all
    subpopulations at that alpha, NaN skipped; 0 removed for "none"; NaN for the defenses that
    remove no rows: certified, fine-pruning)."""
    alphas = sorted({r["alpha"] for r in rows})
    at = {a: [r for r in rows if r["alpha"] == a] for a in alphas}
    worst = {a: sorted((r for r in at[a] if not np.isnan(r["target"])),
                       key=lambda r: (-r["target"], str(r["subpop_id"])))[:k] for a in alphas}
    out = []
    for label in ["none", *labels]:
        def col(r: dict[str, Any], m: str, label: str = label) -> float:
            if label != "none":
                return float(r[f"{label}:{m}"])
            return {"target": r["target"], "collateral": r["collateral"],
                    "clean_accuracy": r["clean_accuracy_after"]}.get(m, 0.0)

        for a in alphas:
            out.append({"defense": label, "alpha": a, "k": k, "k_used": len(worst[a]),
                        "worst_subpops": [str(r["subpop_id"]) for r in worst[a]],
                        "target_worst_k": _nanmean([col(r, "target") for r in worst[a]]),
                        "collateral_all": _nanmean([col(r, "collateral") for r in at[a]]),
                        "clean_accuracy": _nanmean([col(r, "clean_accuracy") for r in at[a]]),
                        "poisons_removed": _nanmean([col(r, "poisons_removed") for r in at[a]]),
                        "clean_removed": _nanmean([col(r, "clean_removed") for r in at[a]])})
    return out


def defense_rows(summary: list[dict[str, Any]]) -> list[dict[str, str]]:
    """:func:`defense_summary` as table rows (``tables/defenses.md`` / ``.csv``); a share that
    does not apply (rows removed by a defense that removes none) reads ``–``."""
    from ..report import pct

    return [{"defense": s["defense"], "alpha": f"{s['alpha']:g}",
             f"target damage (worst {s['k']} undefended)": f"{s['target_worst_k']:.3f}",
             "collateral (all)": pct(float(s["collateral_all"])), "clean accuracy": pct(float(s["clean_accuracy"])),
             "poisons removed": pct(float(s["poisons_removed"])), "clean rows removed": pct(float(s["clean_removed"]))}
            for s in summary]
