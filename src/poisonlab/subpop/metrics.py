"""Subpopulation-attack metrics (Jagielski et al., CCS 2021, Sec. 3): pure functions.

With ``A(D)`` the clean model and ``A(D ∪ Dp)`` the poisoned one, on test rows (x, y):

* target damage = mean over subpopulation rows of ``1[A(D∪Dp)(x) != y] - 1[A(D)(x) != y]``
  (= clean accuracy minus poisoned accuracy on the subpopulation);
* collateral damage = the same mean over the test rows *outside* the subpopulation.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError

ArrayLike = np.ndarray | torch.Tensor


def _np(a: ArrayLike | Sequence[Any]) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _mask(mask: ArrayLike, n: int) -> np.ndarray:
    m = _np(mask)
    if m.dtype != bool:
        raise PoisonlabError(f"mask must be a boolean array (one entry per test row), got dtype {m.dtype}")
    if m.shape != (n,):
        raise PoisonlabError(f"mask has shape {m.shape} but there are {n} test rows")
    return m


def _same_len(*arrays: np.ndarray) -> int:
    lengths = {a.shape for a in arrays}
    if len(lengths) != 1 or len(arrays[0].shape) != 1:
        shapes = [a.shape for a in arrays]
        raise PoisonlabError(f"predictions and labels must be 1-D of one length, got shapes {shapes}")
    return len(arrays[0])


def accuracy_on(pred: ArrayLike, y: ArrayLike, mask: ArrayLike) -> float:
    """Share of rows with ``mask`` True where ``pred == y`` (NaN for an empty mask).

    >>> accuracy_on(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), np.array([True, True, True, False]))
    0.6666666666666666
    """
    p, t = _np(pred), _np(y)
    m = _mask(mask, _same_len(p, t))
    return float((p[m] == t[m]).mean()) if m.any() else float("nan")


def damage_on(pred_clean: ArrayLike, pred_poisoned: ArrayLike, y: ArrayLike, mask: ArrayLike) -> float:
    """Mean of ``1[poisoned wrong] - 1[clean wrong]`` over rows with ``mask`` True (NaN if none).

    >>> damage_on(np.array([1, 1]), np.array([0, 1]), np.array([1, 0]), np.array([True, True]))
    0.5
    """
    c, p, t = _np(pred_clean), _np(pred_poisoned), _np(y)
    m = _mask(mask, _same_len(c, p, t))
    if not m.any():
        return float("nan")
    return float(((p[m] != t[m]).astype(np.float64) - (c[m] != t[m]).astype(np.float64)).mean())


def target_damage(pred_clean: ArrayLike, pred_poisoned: ArrayLike, y: ArrayLike, member: ArrayLike) -> float:
    """Target damage (Sec. 3): :func:`damage_on` over the subpopulation's test rows (``member``)."""
    return damage_on(pred_clean, pred_poisoned, y, member)


def collateral(pred_clean: ArrayLike, pred_poisoned: ArrayLike, y: ArrayLike, member: ArrayLike) -> float:
    """Collateral damage (Sec. 3): :func:`damage_on` over the test rows outside the subpopulation."""
    c = _np(pred_clean)
    return damage_on(pred_clean, pred_poisoned, y, ~_mask(member, len(c)))


def _mean(values: Iterable[float]) -> float:
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=np.float64)
    return float(v.mean()) if len(v) else float("nan")


def worst_k_summary(rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1, 5, 10)) -> list[dict[str, Any]]:
    """For each alpha and k: the k subpopulations with the highest target damage.

    ``rows`` are dicts with keys ``subpop_id, alpha, target, collateral``. Rows repeating a
    ``(subpop_id, alpha)`` pair (several trials) are averaged first. Subpopulations with a
    NaN target are left out of the ranking. Ranking: target descending, ties by subpop_id.

    Returns one dict per (alpha ascending, k in the given order) with:
    ``alpha``, ``k``, ``n_subpops`` (subpopulations ranked at that alpha), ``k_used``
    (= min(k, n_subpops)), ``target_worst_k`` (mean target damage of the worst k),
    ``collateral_worst_k`` (mean collateral of those same k) and ``collateral_all`` (mean
    collateral over *all* subpopulations at that alpha, NaN-valued ones skipped).

    >>> rows = [{"subpop_id": "a", "alpha": 1, "target": 0.5, "collateral": 0.0},
    ...         {"subpop_id": "b", "alpha": 1, "target": 0.1, "collateral": 0.2}]
    >>> s = worst_k_summary(rows, ks=(1,))[0]
    >>> s["target_worst_k"], s["collateral_worst_k"], s["collateral_all"]
    (0.5, 0.0, 0.1)
    """
    ks = list(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise PoisonlabError(f"every k in ks must be a positive integer, got {k!r}")
    needed = ("subpop_id", "alpha", "target", "collateral")
    grouped: dict[Any, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        missing = [key for key in needed if key not in r]
        if missing:
            raise PoisonlabError(f"row {i} lacks key(s) {', '.join(missing)}; each row needs {', '.join(needed)}")
        grouped[r["alpha"]][str(r["subpop_id"])].append((float(r["target"]), float(r["collateral"])))
    out = []
    for alpha in sorted(grouped):
        per = {sid: (_mean(t for t, _ in vals), _mean(c for _, c in vals)) for sid, vals in grouped[alpha].items()}
        ranked = sorted((sid for sid in per if not np.isnan(per[sid][0])), key=lambda s: (-per[s][0], s))
        coll_all = _mean(c for _, c in per.values())
        for k in ks:
            top = ranked[:k]
            out.append({
                "alpha": alpha, "k": int(k), "n_subpops": len(ranked), "k_used": len(top),
                "target_worst_k": _mean(per[s][0] for s in top),
                "collateral_worst_k": _mean(per[s][1] for s in top),
                "collateral_all": coll_all,
            })
    return out
