"""The BadNets traffic-sign table, grouped by sign type.

BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733, Section 4) report the U.S.
traffic-sign results by sign type: rows *stop*, *speed limit*, *warning*, *other* and
*average*; columns the clean baseline's clean accuracy, then for each trigger's BadNet
(yellow square, bomb, flower) its accuracy on clean images and on backdoored images, for
the stop -> speed-limit attack. On GTSRB's 43 classes the groups are:

* ``stop`` (1 class): 14.
* ``speed limit`` (8 classes): 0-5, 7, 8. Class 6, "End of speed limit (80km/h)", lifts a
  limit rather than setting one and is *not* a speed-limit sign.
* ``warning`` (15 classes): the triangular signs, 11 (right-of-way at the next
  intersection) and 18-31 (general caution ... wild animals crossing).
* ``other`` (19 classes): everything else, i.e. 6, 9, 10, 12, 13, 15-17 and 32-42.

This is a different grouping from :mod:`poisonlab.data.gtsrb_groups` (the Section 5
Swedish categories), where stop falls under "other".

:func:`grouped_accuracy` scores clean test predictions, :func:`grouped_backdoor` scores
predictions on the fully triggered test set, :func:`traffic_table` lays both out as the
paper's table and :func:`plot_traffic_table` draws it as a grouped bar chart.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .data.gtsrb import CLASSES
from .errors import PoisonlabError
from .report import Column, Table, pyplot

TRAFFIC_GROUPS: list[str] = ["stop", "speed limit", "warning", "other"]
"""The sign types of BadNets Section 4, in the paper's row order (then "average")."""

_N_CLASSES = len(CLASSES)

_MEMBERS: dict[str, tuple[int, ...]] = {
    "stop": (14,),
    "speed limit": (0, 1, 2, 3, 4, 5, 7, 8),
    "warning": (11, *range(18, 32)),
}

traffic_group_of_class: dict[int, int] = {cls: TRAFFIC_GROUPS.index("other") for cls in range(_N_CLASSES)}
traffic_group_of_class.update({cls: TRAFFIC_GROUPS.index(g) for g, members in _MEMBERS.items() for cls in members})
"""GTSRB class id (0-42) -> index into :data:`TRAFFIC_GROUPS`."""

AVERAGE = "average"
"""The key (and row name) of the all-rows score."""

_ROWS: tuple[str, ...] = (*TRAFFIC_GROUPS, AVERAGE)


# -- validation -------------------------------------------------------------------------
def _labels(t: object, what: str) -> torch.Tensor:
    """``t`` as a 1-D int64 CPU tensor of GTSRB class ids, or a PoisonlabError."""
    if not isinstance(t, torch.Tensor):
        raise PoisonlabError(f"{what} must be a torch tensor of class ids, got {type(t).__name__}")
    if t.dim() != 1:
        raise PoisonlabError(f"{what} must be 1-D (one class id per row), got shape {tuple(t.shape)}; "
                             "take argmax of the logits first")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise PoisonlabError(f"{what} must hold integer class ids, got dtype {t.dtype}")
    t = t.detach().cpu().to(torch.int64)
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= _N_CLASSES):
        raise PoisonlabError(f"{what} holds class ids outside 0..{_N_CLASSES - 1} "
                             f"(min {int(t.min())}, max {int(t.max())})")
    return t


def _pair(pred: object, y: object, pred_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = _labels(pred, pred_name)
    t = _labels(y, "y")
    if len(p) != len(t):
        raise PoisonlabError(f"{pred_name} and y have different lengths ({len(p)} vs {len(t)})")
    return p, t


def _class_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PoisonlabError(f"{what} must be a GTSRB class id (int), got {value!r}")
    if not 0 <= int(value) < _N_CLASSES:
        raise PoisonlabError(f"{what} class id {int(value)} is outside 0..{_N_CLASSES - 1}")
    return int(value)


def _scores(d: object, what: str) -> dict[str, float]:
    """A grouped-score dict with every row key and values in [0, 1] or NaN."""
    if not isinstance(d, Mapping):
        raise PoisonlabError(f"{what} must be a dict of group -> accuracy, got {type(d).__name__}")
    missing = [k for k in _ROWS if k not in d]
    if missing:
        raise PoisonlabError(f"{what} lacks the keys {missing}; expected {list(_ROWS)}")
    out: dict[str, float] = {}
    for k in _ROWS:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise PoisonlabError(f"{what}[{k!r}] must be a number in [0, 1] or NaN, got {v!r}")
        v = float(v)
        if not math.isnan(v) and not 0.0 <= v <= 1.0:
            raise PoisonlabError(f"{what}[{k!r}] = {v} is not a share in [0, 1] (or NaN)")
        out[k] = v
    return out


def _badnets(badnets: object) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    if not isinstance(badnets, Mapping):
        raise PoisonlabError(f"badnets must be a dict of name -> (clean, backdoor), got {type(badnets).__name__}")
    out = {}
    for name, value in badnets.items():
        if not isinstance(name, str) or not name.strip():
            raise PoisonlabError(f"every BadNet name must be a non-empty string, got {name!r}")
        if name == "baseline":
            raise PoisonlabError("the BadNet name 'baseline' clashes with the 'baseline clean' column; rename it")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise PoisonlabError(f"badnets[{name!r}] must be a pair (clean scores, backdoor scores)")
        out[name] = (_scores(value[0], f"badnets[{name!r}] clean"), _scores(value[1], f"badnets[{name!r}] backdoor"))
    return out


# -- scores -----------------------------------------------------------------------------
def _per_group(score: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean of a per-row 0/1 ``score`` within each group (by true class) and over all rows."""
    lookup = torch.tensor([traffic_group_of_class[c] for c in range(_N_CLASSES)], dtype=torch.int64)
    groups = lookup[y]
    score = score.to(torch.float64)
    out: dict[str, float] = {}
    for i, name in enumerate(TRAFFIC_GROUPS):
        sel = groups == i
        out[name] = float(score[sel].mean()) if bool(sel.any()) else math.nan
    out[AVERAGE] = float(score.mean()) if len(score) else math.nan
    return out


def grouped_accuracy(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Clean accuracy per sign type, plus ``"average"``.

    ``pred`` and ``y`` are 1-D GTSRB class ids (0..42). For each group of
    :data:`TRAFFIC_GROUPS`, the share of rows whose *true* class is in that group that are
    predicted exactly right (NaN when the group has no rows). ``"average"`` is the accuracy
    over all rows (so weighted by group size, not the mean of the group values).
    """
    p, t = _pair(pred, y, "pred")
    return _per_group(p == t, t)


def grouped_backdoor(pred_triggered: torch.Tensor, y: torch.Tensor, source: int, target: int) -> dict[str, float]:
    """Accuracy on the fully triggered test set per sign type, plus ``"average"``.

    ``pred_triggered`` are predictions on every test image with the trigger stamped,
    ``y`` the true classes. Each row scores 1 or 0: a row of class ``source`` (the stop
    sign) scores 1 when predicted as ``target`` (attack success); every other row scores 1
    when still predicted as its true class (so a ``target`` row is right when predicted
    ``target``). Per group, the mean score of its rows (NaN when empty); ``"average"`` is
    the mean score over all rows.
    """
    p, t = _pair(pred_triggered, y, "pred_triggered")
    s = _class_id(source, "source")
    g = _class_id(target, "target")
    if s == g:
        raise PoisonlabError(f"source and target must differ, both are {s}")
    wanted = torch.where(t == s, torch.full_like(t, g), t)
    return _per_group(p == wanted, t)


# -- table and plot ---------------------------------------------------------------------
def traffic_table(baseline_clean: dict[str, float],
                  badnets: dict[str, tuple[dict[str, float], dict[str, float]]]) -> Table:
    """The BadNets Section 4 table: one row per sign type, then ``"average"``.

    Columns: ``group``, ``baseline clean``, then for each BadNet (in ``badnets`` order)
    ``"{name} clean"`` and ``"{name} backdoor"``; ``badnets`` maps a name (e.g. the
    trigger) to its (:func:`grouped_accuracy`, :func:`grouped_backdoor`) dicts. Values are
    accuracies (fractions, NaN for an empty group), shown as percentages as in
    :func:`poisonlab.report.pct`.
    """
    base = _scores(baseline_clean, "baseline_clean")
    nets = _badnets(badnets)
    columns = [Column("group"), Column("baseline clean", "pct")]
    for name in nets:
        columns += [Column(f"{name} clean", "pct"), Column(f"{name} backdoor", "pct")]
    rows = []
    for key in _ROWS:
        row: dict[str, object] = {"group": key, "baseline clean": base[key]}
        for name, (clean, backdoor) in nets.items():
            row[f"{name} clean"] = clean[key]
            row[f"{name} backdoor"] = backdoor[key]
        rows.append(row)
    return Table(rows, columns)


def plot_traffic_table(path: str | Path, baseline_clean: dict[str, float],
                       badnets: dict[str, tuple[dict[str, float], dict[str, float]]]) -> None:
    """The table of :func:`traffic_table` as a grouped bar chart (PNG at ``path``).

    One cluster of bars per sign type and the average; bars are the baseline's clean
    accuracy and each BadNet's clean and backdoor accuracy, in percent. NaN draws no bar.
    """
    base = _scores(baseline_clean, "baseline_clean")
    nets = _badnets(badnets)
    out = Path(path)
    if not out.parent.is_dir():
        raise PoisonlabError(f"cannot write the plot: folder {out.parent} does not exist")
    series: list[tuple[str, dict[str, float], str | None]] = [("baseline clean", base, None)]
    for name, (clean, backdoor) in nets.items():
        series += [(f"{name} clean", clean, None), (f"{name} backdoor", backdoor, "//")]
    plt = pyplot()
    n = len(series)
    width = 0.8 / n
    xs = np.arange(len(_ROWS))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.25 * n * len(_ROWS)), 3.6))
    for i, (label, scores, hatch) in enumerate(series):
        heights = [100 * scores[k] for k in _ROWS]
        ax.bar(xs - 0.4 + width * (i + 0.5), heights, width, label=label, hatch=hatch, edgecolor="white")
    ax.set_xticks(xs, labels=list(_ROWS))
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("BadNets on traffic signs, by sign type (stop → speed limit)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    try:
        fig.savefig(out, dpi=100, format="png", bbox_inches="tight")
    except OSError as exc:
        raise PoisonlabError(f"cannot write the plot to {out}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
