"""Robust training against poisoning: TRIM / ILTM and SEVER.

Both defenses are written against two small callbacks, so they work with any learner:

* ``fit(idx)`` trains a fresh model on the training rows ``idx`` (sorted int64 row indices)
  and returns it (e.g. :func:`scratch_fitter`, built on
  :func:`poisonlab.subpop.learners.fit_scratch`, deterministic for a seed on CPU);
* ``losses(model)`` returns one loss per training row, for *all* rows (TRIM), or
  ``gradients(model, idx)`` returns one gradient row per index in ``idx`` (SEVER).

**TRIM** (Jagielski et al., "Manipulating Machine Learning: Poisoning Attacks and
Countermeasures for Regression Learning", S&P 2018, arXiv 1804.00308, Algorithm 2), also
called iterative trimmed loss minimisation (ILTM; Shen & Sanghavi, "Learning with Bad
Training Data via Iterative Trimmed Loss Minimization", ICML 2019): alternately fit a model
on the current subset and keep the ``keep`` rows of lowest loss under that model. Here the
first subset is *all* rows (the paper starts from a random subset; starting from all rows
needs no seed and is what ILTM does in practice). Ties in the loss go to the lower row
index. Iteration stops when the kept set no longer changes or after ``max_iters`` rounds.

**SEVER** (Diakonikolas, Kamath, Kane, Li, Steinhardt, Stewart, "Sever: A Robust
Meta-Algorithm for Stochastic Optimization", ICML 2019, arXiv 1803.02815, Algorithm 1 with
the fixed-fraction removal of its experiments): each round fits on the kept rows, centres
their per-row loss gradients, scores every kept row by its squared projection on the top
right singular vector of the centred gradient matrix, and removes the highest scores. For
deep models the gradients are those of the last layer (:func:`last_layer_gradients`,
exact and in closed form). After the last round a final model is fitted on the kept rows.

Determinism: all selection is done in float64 numpy with stable sorts; the SVD runs on
float64 (LAPACK); given a deterministic ``fit`` the results are reproducible.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..checks import is_whole
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from ..train import predict_logits

__all__ = [
    "SeverResult",
    "TrimResult",
    "cross_entropy_losses",
    "last_layer_gradient_fn",
    "last_layer_gradients",
    "last_linear",
    "per_row_cross_entropy",
    "scratch_fitter",
    "sever",
    "trim",
]

FitFn = Callable[[np.ndarray], nn.Module]
LossFn = Callable[[nn.Module], np.ndarray]
GradFn = Callable[[nn.Module, np.ndarray], np.ndarray]


def _check_rows(n_rows: object) -> int:
    if not is_whole(n_rows) or int(n_rows) < 1:  # type: ignore[arg-type]
        raise PoisonlabError(f"n_rows must be an integer >= 1, got {shown(n_rows)}")
    return int(n_rows)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- TRIM


@dataclass
class TrimResult:
    """What TRIM decided.

    ``kept``: boolean mask of the rows kept (``keep`` of them); ``iterations``: fit-and-trim
    rounds run; ``changes[t]``: rows whose membership changed in round ``t + 1`` (the first
    round, from all rows, changes ``n - keep``; a final 0 means the set was stable);
    ``converged``: whether the set stopped changing within ``max_iters``; ``losses``: the
    per-row losses that made the last selection; ``model``: a model fitted on ``kept``
    (``fits``: models trained in all, one more than ``iterations`` if not converged, when
    a last fit on the final kept set was needed).
    """

    kept: np.ndarray
    iterations: int
    changes: list[int]
    converged: bool
    losses: np.ndarray
    model: nn.Module
    fits: int = 0

    @property
    def removed(self) -> np.ndarray:
        """Boolean mask of the rows trimmed away (``~kept``)."""
        return ~self.kept

    @property
    def removed_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.kept)


def _check_losses(values: object, n: int) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = arr.astype(np.float64)
    if arr.shape != (n,):
        raise PoisonlabError(f"losses(model) must return one loss per row, shape ({n},); got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PoisonlabError(f"losses(model) returned {int((~np.isfinite(arr)).sum())} non-finite losses")
    return arr


def _lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` lowest values; ties go to the lower index."""
    return np.sort(np.argsort(values, kind="stable")[:k])


def trim(fit: FitFn, losses: LossFn, n_rows: int, keep: int, max_iters: int = 10) -> TrimResult:
    """TRIM / iterative trimmed loss minimisation (Jagielski et al. 2018; Shen & Sanghavi 2019).

    Starting from all ``n_rows`` rows: fit on the current subset, compute the loss of every
    row under that model, keep the ``keep`` lowest (ties: lower row index), and repeat until
    the kept set is unchanged or ``max_iters`` rounds have run.
    """
    n = _check_rows(n_rows)
    if not is_whole(keep) or not 1 <= int(keep) <= n:
        raise PoisonlabError(f"keep must be an integer in 1..{n} (rows to keep), got {shown(keep)}")
    if not is_whole(max_iters) or int(max_iters) < 1:
        raise PoisonlabError(f"max_iters must be an integer >= 1, got {shown(max_iters)}")
    k = int(keep)
    current = np.arange(n, dtype=np.int64)
    changes: list[int] = []
    converged = False
    fits = 0
    model: nn.Module | None = None
    row_losses = np.zeros(n)
    for _ in range(int(max_iters)):
        model = fit(current.copy())
        fits += 1
        row_losses = _check_losses(losses(model), n)
        chosen = _lowest(row_losses, k)
        changed = len(np.setxor1d(current, chosen, assume_unique=True))
        changes.append(changed)
        current = chosen
        if changed == 0:
            converged = True
            break
    if not converged:  # the last model was fitted on the previous subset: refit on the kept one
        model = fit(current.copy())
        fits += 1
    kept = np.zeros(n, dtype=bool)
    kept[current] = True
    assert model is not None
    return TrimResult(kept, len(changes), changes, converged, row_losses, model, fits)


def per_row_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor | np.ndarray,
                          batch_size: int = 2048) -> np.ndarray:
    """Softmax cross-entropy of every row under ``model`` (eval mode), float64 numpy (N,)."""
    yt = torch.as_tensor(y).to(torch.int64).reshape(-1)
    if len(yt) != len(x):
        raise PoisonlabError(f"x has {len(x)} rows but y has {len(yt)}")
    if not is_whole(batch_size) or batch_size < 1:
        raise PoisonlabError(f"batch_size must be an integer >= 1, got {shown(batch_size)}")
    if len(x) == 0:
        return np.zeros(0)
    logits = predict_logits(model, x, batch_size, desc="losses").double()
    return F.cross_entropy(logits, yt, reduction="none").numpy()


# ----------------------------------------------------------------------------------- SEVER


@dataclass
class SeverResult:
    """What SEVER decided.

    ``kept``: boolean mask of the rows kept after the last round; ``scores``: the last
    round's outlier scores (squared projection on the top singular direction; NaN for rows
    removed in earlier rounds); ``removed_per_round``: sorted row indices removed in each
    round; ``singular_values``: top singular value of each round's centred gradients;
    ``model``: a model fitted on ``kept`` after the last round.
    """

    kept: np.ndarray
    scores: np.ndarray
    removed_per_round: list[np.ndarray]
    singular_values: list[float]
    model: nn.Module

    @property
    def removed(self) -> np.ndarray:
        """Boolean mask of every row removed in some round (``~kept``)."""
        return ~self.kept


def _removal_count(per_round: float, m: int) -> int:
    """Rows to remove from ``m`` kept rows: a count, or ``round(share * m)`` half up; at most ``m - 1``."""
    k = int(per_round) if is_whole(per_round) else math.floor(float(per_round) * m + 0.5 + 1e-9)
    return max(0, min(k, m - 1))


def sever(fit: FitFn, gradients: GradFn, n_rows: int, remove_per_round: float | int,  # noqa: PYI041
          rounds: int) -> SeverResult:
    """SEVER (Diakonikolas et al., ICML 2019): repeatedly remove rows whose centred gradients
    project most strongly on the top singular direction.

    ``remove_per_round``: an integer count, or a share in (0, 1) of the rows kept at the
    start of the round (rounded half up). Ties in the score go to the lower row index (it
    is removed first). A round whose centred gradients are all zero removes nothing. At
    least one row is always kept.
    """
    n = _check_rows(n_rows)
    if not is_whole(rounds) or int(rounds) < 1:
        raise PoisonlabError(f"rounds must be an integer >= 1, got {shown(rounds)}")
    if is_whole(remove_per_round):
        if int(remove_per_round) < 1:  # type: ignore[arg-type]
            raise PoisonlabError(f"remove_per_round as a count must be >= 1, got {shown(remove_per_round)}")
        if int(remove_per_round) * int(rounds) >= n:  # type: ignore[arg-type]
            raise PoisonlabError(f"removing {remove_per_round} rows in each of {rounds} rounds would remove all "
                                 f"{n} rows; lower remove_per_round or rounds")
    elif isinstance(remove_per_round, bool) or not isinstance(remove_per_round, numbers.Real) \
            or not 0 < float(remove_per_round) < 1:
        raise PoisonlabError(f"remove_per_round must be a count >= 1 or a share in (0, 1), got {shown(remove_per_round)}")
    current = np.arange(n, dtype=np.int64)
    removed_per_round: list[np.ndarray] = []
    singular: list[float] = []
    scores = np.full(n, np.nan)
    for _ in range(int(rounds)):
        model = fit(current.copy())
        g = gradients(model, current.copy())
        g = (g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)).astype(np.float64)
        if g.ndim != 2 or len(g) != len(current):
            raise PoisonlabError(f"gradients(model, idx) must return a ({len(current)}, P) matrix, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise PoisonlabError("gradients(model, idx) returned non-finite values")
        centred = g - g.mean(0)
        scores = np.full(n, np.nan)
        if centred.shape[1] == 0 or not np.any(centred):
            scores[current] = 0.0
            singular.append(0.0)
            removed_per_round.append(np.zeros(0, dtype=np.int64))
            continue
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        singular.append(float(s[0]))
        round_scores = (centred @ vt[0]) ** 2
        scores[current] = round_scores
        k = _removal_count(remove_per_round, len(current))
        drop = np.sort(current[np.argsort(-round_scores, kind="stable")[:k]])
        removed_per_round.append(drop)
        current = np.setdiff1d(current, drop, assume_unique=True)
    model = fit(current.copy())
    kept = np.zeros(n, dtype=bool)
    kept[current] = True
    return SeverResult(kept, scores, removed_per_round, singular, model)


def last_linear(model: nn.Module) -> nn.Linear:
    """The last registered ``nn.Linear`` of ``model`` (its output layer in the project's networks)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PoisonlabError(f"{type(model).__name__} has no nn.Linear layer; last-layer gradients need one")
    return linears[-1]


@torch.no_grad()
def last_layer_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor | np.ndarray,
                         batch_size: int = 2048) -> np.ndarray:
    """Per-row gradients of the softmax cross-entropy w.r.t. the last ``nn.Linear``'s parameters.

    Closed form: with ``h`` the layer's input, ``p = softmax(logits)`` and ``e_y`` the one-hot
    label, ``grad_W = (p - e_y) h^T`` and ``grad_b = p - e_y``. Each row is
    ``[grad_W.flatten() (row-major, C*D), grad_b (C)]`` (no bias part when the layer has
    none), float64 numpy (N, C*D [+ C]). The layer must produce the model's output
    (checked). The model is run in eval mode, in its parameters' dtype.
    """
    yt = torch.as_tensor(y).to(torch.int64).reshape(-1)
    if len(yt) != len(x):
        raise PoisonlabError(f"x has {len(x)} rows but y has {len(yt)}")
    if not is_whole(batch_size) or batch_size < 1:
        raise PoisonlabError(f"batch_size must be an integer >= 1, got {shown(batch_size)}")
    layer = last_linear(model)
    width = layer.out_features * layer.in_features + (layer.out_features if layer.bias is not None else 0)
    if len(yt) and (int(yt.min()) < 0 or int(yt.max()) >= layer.out_features):
        raise PoisonlabError(f"labels must be in 0..{layer.out_features - 1}, got {int(yt.min())}..{int(yt.max())}")
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        captured["h"], captured["out"] = inp[0], out

    param = next(model.parameters())
    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(hook)
    rows = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(param.device, param.dtype)
            logits = model(xb)
            if "out" not in captured or captured["out"] is not logits and not torch.equal(captured["out"], logits):
                raise PoisonlabError(f"the last nn.Linear of {type(model).__name__} does not produce the model's "
                                     "output; last-layer gradients need it as the output layer")
            h = captured["h"].reshape(len(xb), -1).double()
            delta = torch.softmax(logits.double(), 1)
            yb = yt[start:start + batch_size].to(delta.device)
            delta[torch.arange(len(yb), device=delta.device), yb] -= 1.0
            parts = [(delta[:, :, None] * h[:, None, :]).reshape(len(xb), -1)]
            if layer.bias is not None:
                parts.append(delta)
            rows.append(torch.cat(parts, 1).cpu())
            captured.clear()
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(rows).numpy() if rows else np.zeros((0, width))


# ------------------------------------------------------------------ callbacks from a Dataset


def scratch_fitter(spec: object, data: Dataset, seed: int) -> FitFn:
    """``fit(idx)``: a fresh network of the :class:`~poisonlab.subpop.learners.LearnerSpec`
    trained on ``data``'s rows ``idx`` (same seed every time, so fits are comparable)."""
    from ..subpop.learners import fit_scratch

    def fit(idx: np.ndarray) -> nn.Module:
        return fit_scratch(spec, data.subset(torch.as_tensor(idx, dtype=torch.int64)), seed)  # type: ignore[arg-type]

    return fit


def cross_entropy_losses(data: Dataset, batch_size: int = 2048) -> LossFn:
    """``losses(model)``: per-row cross-entropy over all rows of ``data``."""
    return lambda model: per_row_cross_entropy(model, data.x, data.y, batch_size)


def last_layer_gradient_fn(data: Dataset, batch_size: int = 2048) -> GradFn:
    """``gradients(model, idx)``: :func:`last_layer_gradients` of ``data``'s rows ``idx``."""
    def gradients(model: nn.Module, idx: np.ndarray) -> np.ndarray:
        i = torch.as_tensor(idx, dtype=torch.int64)
        return last_layer_gradients(model, data.x[i], data.y[i], batch_size)

    return gradients
