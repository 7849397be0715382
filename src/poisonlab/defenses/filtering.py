"""The common interface of *filtering* defenses: score every training row, remove the suspects.

A filtering defense (Spectral Signatures, Tran et al. NeurIPS 2018, arXiv 1811.00636;
Activation Clustering, Chen et al. 2018, arXiv 1811.03728) reads the representations a
model trained on the (possibly poisoned) training set gives to its own training rows,
grouped by the *training* labels, and returns a :class:`FilterResult`: one suspicion score
per row (higher = more suspicious) and the rows it removes. The caller then retrains on the
rows that are kept.

:func:`detection_metrics` measures a removal against the known poison mask; every value is
a count or a ratio of counts (NaN where the denominator is zero), so it can be checked by
hand. Per-class values group rows by the labels given (the training labels, so a poisoned
row counts in the class it was relabelled to).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset
from ..errors import PoisonlabError, shown

__all__ = ["FilterResult", "check_representations", "detection_metrics", "representations"]


@dataclass
class FilterResult:
    """What a filtering defense decided: ``scores`` (suspicion per training row, higher = more
    suspicious; comparable within a class), ``remove`` (boolean, rows the defense removes) and
    ``details`` (per-defense diagnostics)."""

    scores: np.ndarray
    remove: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.remove = np.asarray(self.remove, dtype=bool)
        if self.scores.shape != self.remove.shape or self.scores.ndim != 1:
            raise ValueError(f"scores {self.scores.shape} and remove {self.remove.shape} must be equal 1-D shapes")

    @property
    def keep(self) -> np.ndarray:
        """Boolean mask of the rows the defense keeps (``~remove``)."""
        return ~self.remove

    @property
    def n_removed(self) -> int:
        return int(self.remove.sum())


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _bool_mask(a: Any, name: str) -> np.ndarray:
    m = _np(a)
    if m.ndim != 1:
        raise PoisonlabError(f"{name} must be a 1-D mask, got shape {m.shape}")
    if m.dtype != bool:
        if m.size and not np.isin(m, (0, 1)).all():
            raise PoisonlabError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        m = m.astype(bool)
    return m


def _int_labels(a: Any, name: str = "labels") -> np.ndarray:
    y = _np(a)
    if y.ndim != 1:
        raise PoisonlabError(f"{name} must be a 1-D array of class indices, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise PoisonlabError(f"{name} must be integer class indices, got dtype {y.dtype}")


def check_representations(reprs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``reprs`` as a finite float64 (N, D) array and ``labels`` as int64 (N,); one-line errors otherwise."""
    x = _np(reprs)
    if x.ndim != 2:
        raise PoisonlabError(f"representations must be a 2-D array (rows, features), got shape {x.shape}; "
                             f"flatten them first (e.g. with representations())")
    if x.dtype.kind not in "iufb":
        raise PoisonlabError(f"representations must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)  # the callers never write into it
    y = _int_labels(labels)
    if len(x) != len(y):
        raise PoisonlabError(f"representations have {len(x)} rows but labels have {len(y)}; pass one label per row")
    if len(x) == 0:
        raise PoisonlabError("no rows to filter: representations are empty")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise PoisonlabError(f"representations contain NaN or infinite values in {len(rows)} row(s) "
                             f"(first: row {rows[0]}); check the model and the layer read")
    return x, y


def _share(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _per_class_share(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def detection_metrics(remove: Any, poison_mask: Any, y: Any, num_classes: int) -> dict[str, Any]:
    """How well a removal matches the planted poison.

    With TP = removed poison rows, FP = removed clean rows, FN = kept poison rows,
    TN = kept clean rows:

    * ``precision`` = TP / (TP + FP) (NaN when nothing is removed);
    * ``recall`` = ``tpr`` = TP / (TP + FN) (NaN when there is no poison);
    * ``fpr`` = FP / (FP + TN) (NaN when there is no clean row);
    * ``removed_share`` = removed rows / all rows;
    * ``removed_share_per_class[c]`` = removed rows of class c / rows of class c;
    * ``clean_removed_share_per_class[c]`` = removed clean rows of class c / clean rows of class c
      (e.g. "at most 20 % of the clean rows of the target class are removed");
    * ``recall_per_class[c]`` = removed poison rows of class c / poison rows of class c;

    per-class values are NaN where the class has no such rows; ``y`` are the labels the rows
    carry in the training set. Counts: ``n_rows``, ``n_poison``, ``n_removed``,
    ``true_positives``, ``false_positives``, ``false_negatives``, ``true_negatives``.

    >>> m = detection_metrics([1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], 2)
    >>> m["precision"], m["recall"], m["fpr"], m["clean_removed_share_per_class"].tolist()
    (0.5, 0.5, 0.5, [1.0, 0.0])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise PoisonlabError(f"num_classes must be a positive integer, got {shown(num_classes)}")
    rem = _bool_mask(remove, "remove")
    poi = _bool_mask(poison_mask, "poison_mask")
    lab = _int_labels(y, "y")
    if not len(rem) == len(poi) == len(lab):
        raise PoisonlabError(f"remove ({len(rem)}), poison_mask ({len(poi)}) and y ({len(lab)}) "
                             f"must have the same length")
    if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
        raise PoisonlabError(f"y holds class {lab.min() if lab.min() < 0 else lab.max()} "
                             f"outside 0..{num_classes - 1}; pass the right num_classes")
    tp = int((rem & poi).sum())
    fp = int((rem & ~poi).sum())
    fn = int((~rem & poi).sum())
    tn = int((~rem & ~poi).sum())

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(lab[mask], minlength=num_classes).astype(np.float64)

    rows_c, clean_c, poison_c = count(np.ones_like(rem)), count(~poi), count(poi)
    return {
        "n_rows": len(lab),
        "n_poison": int(poi.sum()),
        "n_removed": int(rem.sum()),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
        "precision": _share(tp, tp + fp),
        "recall": _share(tp, tp + fn),
        "tpr": _share(tp, tp + fn),
        "fpr": _share(fp, fp + tn),
        "removed_share": _share(tp + fp, len(lab)),
        "removed_share_per_class": _per_class_share(count(rem), rows_c),
        "clean_removed_share_per_class": _per_class_share(count(rem & ~poi), clean_c),
        "recall_per_class": _per_class_share(count(rem & poi), poison_c),
    }


def representations(model: nn.Module, x: torch.Tensor | Dataset, layer: str | None = "auto",
                    batch_size: int = 1024) -> np.ndarray:
    """Flattened (N, D) float64 representations of the rows of ``x`` at ``layer`` of ``model``.

    ``"auto"`` is the input of the last ``nn.Linear`` of a Sequential network (the
    penultimate layer both papers read); ``None``/``"input"`` the raw features; any other
    name a layer of ``model`` (see :func:`poisonlab.models.layers.activations`). Rows are
    processed ``batch_size`` at a time by :func:`poisonlab.subpop.learners.representation`.
    """
    from ..models.layers import activations
    from ..subpop.learners import last_hidden_layer, representation

    if isinstance(x, Dataset):
        x = x.x
    if not isinstance(x, torch.Tensor):
        raise PoisonlabError(f"x must be a tensor or a Dataset, got {type(x).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PoisonlabError(f"batch_size must be a positive integer, got {shown(batch_size)}")
    if len(x) == 0:
        raise PoisonlabError("no rows to compute representations of: x is empty")
    if layer == "auto":
        layer = last_hidden_layer(model)  # resolved once, not per batch
    if layer in (None, "input"):
        return representation(model, x, layer)
    # one pass, float32 batches gathered, one conversion to float64 at the end (the same values)
    out = activations(model, x, [layer], batch_size)[layer]
    return out.reshape(len(out), -1).double().numpy()
