"""STRIP: STRong Intentional Perturbation (Gao et al., ACSAC 2019, arXiv 1902.06531).

A run-time detector of triggered inputs. Each input ``x`` is superimposed on
``n_overlays`` images drawn at random from a held-out clean pool,
``x_i = (1 - alpha) * x + alpha * overlay_i`` (``alpha = 0.5``: the paper's ``(x + overlay) / 2``),
and the model classifies every blend. A clean input is drowned by the overlay's content, so
the predictions scatter over classes (high entropy); a trigger survives the blend and keeps
pulling every blend into the target class (low entropy). The score of an input is the mean
Shannon entropy (base 2, the paper's Eq. 4-5) of the softmax outputs over its blends.

The detection boundary comes from clean data only (Section 4.3): the ``frr``-quantile of the
entropies of held-out clean inputs (:func:`fit_threshold`), so that a fraction ``frr`` of
clean inputs is rejected; an input is flagged when its entropy is *below* the threshold
(:func:`strip_detect`).

Determinism: the overlays of input ``i`` are drawn by ``np.random.default_rng([seed, tag])``
(one generator per call, rows in order), without replacement when the pool is large enough;
the model runs in eval mode without gradients, so the same seed gives the same entropies.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset, as_image_batch
from ..errors import PoisonlabError, shown

__all__ = ["StripResult", "detection_summary", "fit_threshold", "run_strip", "strip_detect", "strip_entropy"]

_STREAM_TAG = 0x5791  # separates STRIP's overlay draws from other uses of the same seed


def _images(x: Any, name: str) -> torch.Tensor:
    return as_image_batch(x, name, "STRIP blends images and does not apply to tabular or text data")


def _check_frr(frr: float) -> None:
    if isinstance(frr, bool) or not isinstance(frr, numbers.Real) or not 0 < frr < 1:
        raise PoisonlabError(f"STRIP frr (the false-rejection rate on clean inputs) must be in (0, 1), got {shown(frr)}")


def _blend_indices(n: int, pool: int, n_overlays: int, seed: int) -> np.ndarray:
    """(n, n_overlays) indices into the pool: distinct per input when ``pool >= n_overlays``."""
    rng = np.random.default_rng([seed, _STREAM_TAG])
    if pool < n_overlays:
        return rng.integers(0, pool, size=(n, n_overlays))
    out = np.empty((n, n_overlays), dtype=np.int64)
    for i in range(n):
        out[i] = rng.choice(pool, size=n_overlays, replace=False)
    return out


@torch.no_grad()
def strip_entropy(model: nn.Module, x: torch.Tensor | Dataset, clean_pool: torch.Tensor | Dataset,
                  n_overlays: int = 20, seed: int = 0, alpha: float = 0.5, batch_size: int = 2048,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Mean entropy (bits) of the model's predictions on ``n_overlays`` blends of each input.

    Blend: ``(1 - alpha) * x + alpha * overlay`` with overlays from ``clean_pool`` (Gao et al.
    2019, Section 4.1). ``batch_size`` bounds the blended images per forward pass. Returns a
    float64 array of one entropy per row of ``x``.
    """
    xs = _images(x, "x")
    pool = _images(clean_pool, "clean_pool")
    if isinstance(n_overlays, bool) or not isinstance(n_overlays, (int, np.integer)) or n_overlays < 1:
        raise PoisonlabError(f"STRIP n_overlays must be a whole number >= 1, got {shown(n_overlays)}")
    if len(pool) == 0:
        raise PoisonlabError("STRIP needs a non-empty clean pool of held-out images to overlay; got 0 images")
    if tuple(pool.shape[1:]) != tuple(xs.shape[1:]):
        raise PoisonlabError(f"the clean pool's images are {tuple(pool.shape[1:])} but the inputs are "
                             f"{tuple(xs.shape[1:])}; give images of the same shape")
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
        raise PoisonlabError(f"STRIP alpha (the overlay's weight) must be in (0, 1), got {shown(alpha)}")
    if batch_size < 1:
        raise PoisonlabError(f"STRIP batch_size must be >= 1, got {batch_size}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise PoisonlabError(f"STRIP seed must be a whole number >= 0, got {shown(seed)}")
    n_overlays = int(n_overlays)
    device = torch.device(device)
    idx = torch.from_numpy(_blend_indices(len(xs), len(pool), n_overlays, seed))
    rows_per_pass = max(1, batch_size // n_overlays)
    out = np.empty(len(xs), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(xs), rows_per_pass):
            xb = xs[start:start + rows_per_pass].to(device, torch.float32)
            ov = pool[idx[start:start + rows_per_pass].flatten()].to(device, torch.float32)
            blended = (1 - alpha) * xb.repeat_interleave(n_overlays, dim=0) + alpha * ov
            logp = torch.log_softmax(model(blended).double(), dim=1)
            ent = -(logp.exp() * logp).sum(1) / math.log(2)  # bits; p log p -> 0 as p -> 0
            out[start:start + len(xb)] = ent.view(len(xb), n_overlays).mean(1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def fit_threshold(clean_entropies: np.ndarray | torch.Tensor | list[float], frr: float = 0.01) -> float:
    """The ``frr``-quantile of clean entropies: the boundary rejecting a fraction ``frr`` of clean inputs.

    Linear interpolation between order statistics (``np.quantile``'s default), as the paper
    picks a percentile of the clean entropy distribution (Gao et al. 2019, Section 4.3).

    >>> fit_threshold([1.0, 2.0, 3.0, 4.0, 5.0], frr=0.25)
    2.0
    """
    _check_frr(frr)
    e = np.asarray(clean_entropies.detach().cpu() if isinstance(clean_entropies, torch.Tensor) else clean_entropies,
                   dtype=np.float64).ravel()
    if e.size == 0:
        raise PoisonlabError("fit_threshold needs the entropies of at least one clean input; got none")
    if not np.all(np.isfinite(e)):
        raise PoisonlabError("fit_threshold got non-finite clean entropies (nan or inf); check the model's outputs")
    return float(np.quantile(e, frr))


def strip_detect(entropies: np.ndarray, threshold: float) -> np.ndarray:
    """Flag (True) each input whose entropy is below ``threshold``: a suspected triggered input."""
    return np.asarray(entropies, dtype=np.float64) < float(threshold)


def detection_summary(flags: np.ndarray | torch.Tensor, is_triggered: np.ndarray | torch.Tensor) -> dict[str, float]:
    """TPR (flagged triggered / triggered) and FPR (flagged clean / clean), with the counts.

    A rate over no inputs is ``nan``.

    >>> detection_summary([True, False, True, False], [True, True, False, False])
    {'tpr': 0.5, 'fpr': 0.5, 'n_triggered': 2, 'n_clean': 2, 'n_flagged': 2}
    """
    f = np.asarray(flags.cpu() if isinstance(flags, torch.Tensor) else flags).astype(bool).ravel()
    t = np.asarray(is_triggered.cpu() if isinstance(is_triggered, torch.Tensor) else is_triggered).astype(bool).ravel()
    if f.shape != t.shape:
        raise PoisonlabError(f"detection_summary got {f.size} flags but {t.size} is_triggered values; give one per input")
    n_trig, n_clean = int(t.sum()), int((~t).sum())
    return {
        "tpr": float(f[t].mean()) if n_trig else float("nan"),
        "fpr": float(f[~t].mean()) if n_clean else float("nan"),
        "n_triggered": n_trig,
        "n_clean": n_clean,
        "n_flagged": int(f.sum()),
    }


@dataclass
class StripResult:
    """STRIP on a batch: per-input entropies, the clean-fitted threshold, and the flags."""

    entropies: np.ndarray
    threshold: float
    flags: np.ndarray
    clean_entropies: np.ndarray
    frr: float

    def summary(self, is_triggered: np.ndarray | torch.Tensor) -> dict[str, float]:
        """:func:`detection_summary` of these flags against the ground truth."""
        return detection_summary(self.flags, is_triggered)


def run_strip(model: nn.Module, x: torch.Tensor | Dataset, clean_pool: torch.Tensor | Dataset,
              clean_check: torch.Tensor | Dataset, frr: float = 0.01, n_overlays: int = 20, seed: int = 0,
              alpha: float = 0.5, batch_size: int = 2048, device: torch.device | str = "cpu") -> StripResult:
    """Fit the threshold on the entropies of ``clean_check`` (held-out clean inputs), then score ``x``.

    Both sets are blended with overlays from ``clean_pool`` (Gao et al. 2019, Section 4).
    """
    _check_frr(frr)
    clean = strip_entropy(model, clean_check, clean_pool, n_overlays, seed, alpha, batch_size, device)
    threshold = fit_threshold(clean, frr)
    ent = strip_entropy(model, x, clean_pool, n_overlays, seed, alpha, batch_size, device)
    return StripResult(ent, threshold, strip_detect(ent, threshold), clean, float(frr))
