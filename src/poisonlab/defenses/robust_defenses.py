"""Robust training as registered defenses: TRIM / ILTM, SEVER and the certified smoothed ridge.

Each trains a defended model from the experiment's (possibly poisoned) training set instead of
repairing the suspect model:

* ``trim`` (:func:`~poisonlab.defenses.robust_training.trim`): the victim's own learner
  (``ctx.retrain``) fitted, the rows of highest cross-entropy trimmed (on regression data, of
  highest squared residual: Jagielski et al. 2018, Algorithm 2), refitted, until the kept set
  is stable; removes ``n - keep`` rows;
* ``sever`` (:func:`~poisonlab.defenses.robust_training.sever`): ``rounds`` rounds of fitting
  and removing the rows whose last-layer gradients project most on the top singular direction;
* ``certified`` (:class:`~poisonlab.defenses.certified.SmoothedRidge`, Rosenfeld et al. 2020):
  ridge regression on the flattened model inputs, smoothed over label noise ``q``; binary
  labels only (the certificate is the binary one of the paper; no multi-class extension is
  claimed). The defended model is a :class:`SmoothedRidgeClassifier`, an ``nn.Module`` whose
  logits rank the smoothed class first, so any evaluation code can predict with it.

None reads test data to decide; TRIM's and SEVER's thresholds are fixed parameters.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import MAX_COUNT, MAX_ROWS, is_number, is_whole, need_int, need_number
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .certified import SmoothedRidge, curve_from_radii
from .filter_defenses import removal_report
from .pruning_config import DefenseOutcome
from .registry import DefenseInputs
from .robust_training import cross_entropy_losses, last_layer_gradient_fn, sever, trim

__all__ = [
    "CertifiedConfig",
    "SeverConfig",
    "SmoothedRidgeClassifier",
    "TrimConfig",
    "certified_accuracy_on",
    "certified_defense",
    "fit_smoothed_ridge",
    "sever_defense",
    "trim_defense",
    "trim_keep_count",
]

MAX_ROUNDS = 1000


def _fail(where: str, key: str, what: str, value: Any) -> None:
    raise PoisonlabError(f"{where}.{key} must be {what}, got {shown(value)}")


def _count(v: Any, where: str, key: str, low: int, high: int, what: str = "") -> None:
    if not (is_whole(v) and v >= low):
        _fail(where, key, f"an integer >= {low}{what}", v)
    need_int(v, f"{where}.{key}", low, high)


# ----------------------------------------------------------------------------------- TRIM
@dataclass
class TrimConfig:
    """``defenses:`` keys of TRIM / ILTM (Jagielski et al., S&P 2018, Algorithm 2; Shen &
    Sanghavi, ICML 2019). Keep the ``round((1 - epsilon) * n)`` rows of lowest cross-entropy,
    or ``round(keep_fraction * n)`` when ``keep_fraction`` is given (half up; give one of the
    two), for at most ``max_iters`` fit-and-trim rounds. Defaults: ``epsilon = 0.05`` (an
    assumed poison rate; the paper's algorithm takes the true count ``n`` of clean rows, which
    a defender does not know) and ``max_iters = 5`` (the kept set is usually stable after a
    few rounds)."""

    name: str = "trim"
    label: str | None = None
    epsilon: float | None = None
    keep_fraction: float | None = None
    max_iters: int = 5

    DEFAULT_EPSILON = 0.05
    regression = True
    """TRIM also defends regression (squared residuals: the paper's own setting)."""

    def validate(self, where: str = "defense") -> None:
        if self.epsilon is not None and self.keep_fraction is not None:
            raise PoisonlabError(f"{where}: give trim either epsilon or keep_fraction, not both")
        if self.epsilon is None and self.keep_fraction is None:
            self.epsilon = self.DEFAULT_EPSILON
        if self.epsilon is not None and not (is_number(self.epsilon) and 0 < self.epsilon < 1):
            _fail(where, "epsilon", "a number in (0, 1)", self.epsilon)
        if self.keep_fraction is not None and not (is_number(self.keep_fraction) and 0 < self.keep_fraction <= 1):
            _fail(where, "keep_fraction", "a number in (0, 1] or null", self.keep_fraction)
        _count(self.max_iters, where, "max_iters", 1, MAX_ROUNDS)

    def to_dict(self) -> dict[str, Any]:
        """The settings, ``epsilon`` left out when ``keep_fraction`` rules."""
        out = {"name": self.name, "label": self.label, "epsilon": self.epsilon, "keep_fraction": self.keep_fraction,
               "max_iters": self.max_iters}
        if self.keep_fraction is not None:
            out.pop("epsilon")
        return out


def trim_keep_count(cfg: TrimConfig | dict[str, Any], n: int) -> int:
    """Rows TRIM keeps of ``n``: ``round(keep_fraction * n)`` or ``round((1 - epsilon) * n)``, half up, in 1..n."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    keep = get("keep_fraction")
    share = keep if keep is not None else 1.0 - (get("epsilon") if get("epsilon") is not None
                                                 else TrimConfig.DEFAULT_EPSILON)
    return max(1, min(n, math.floor(share * n + 0.5 + 1e-9)))


def _fitter(ctx: DefenseInputs, name: str) -> Any:
    if ctx.train is None or ctx.retrain is None:
        raise PoisonlabError(f"defense '{name}' retrains the victim: it needs the training set and a way to retrain")
    train, retrain = ctx.train, ctx.retrain
    fits = [0]

    def fit(idx: np.ndarray) -> nn.Module:
        fits[0] += 1
        return retrain(train.subset(torch.as_tensor(idx, dtype=torch.int64)), f"{name} fit {fits[0]}")

    return fit


def squared_residuals(data: Dataset, batch_size: int = 2048) -> Any:
    """``losses(model)``: per-row squared residual ``(f(x) - y)^2`` of a regressor over all rows of ``data``."""
    from ..train import predict_logits

    y = data.y.double().numpy()
    return lambda model: (predict_logits(model, data.x, batch_size, desc="residuals")[:, 0].double().numpy() - y) ** 2


def trim_defense(cfg: TrimConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """TRIM with the victim's learner on ``ctx.train``; the defended model is the last fit."""
    name = cfg.label or cfg.name
    fit = _fitter(ctx, name)
    assert ctx.train is not None
    n = len(ctx.train)
    losses = squared_residuals(ctx.train) if ctx.train.is_regression else cross_entropy_losses(ctx.train)
    res = trim(fit, losses, n, trim_keep_count(cfg, n), cfg.max_iters)
    extra = {**removal_report(res.removed, ctx), "retrained": True, "kept": int(res.kept.sum()),
             "iterations": res.iterations, "changes": res.changes, "converged": res.converged, "fits": res.fits}
    return DefenseOutcome(res.model, extra=extra, removed=res.removed.copy())


# ----------------------------------------------------------------------------------- SEVER
@dataclass
class SeverConfig:
    """``defenses:`` keys of SEVER (Diakonikolas et al., ICML 2019, Algorithm 1 with the
    fixed-fraction removal of its experiments): ``rounds`` rounds, each removing
    ``remove_fraction`` of the kept rows (half up) by their squared projection on the top
    singular direction of the centred last-layer gradients. Defaults: ``remove_fraction =
    0.01``, ``rounds = 4`` (about 4 % of the rows removed in all)."""

    name: str = "sever"
    label: str | None = None
    remove_fraction: float = 0.01
    rounds: int = 4

    def validate(self, where: str = "defense") -> None:
        if not (is_number(self.remove_fraction) and 0 < self.remove_fraction < 1):
            _fail(where, "remove_fraction", "a number in (0, 1)", self.remove_fraction)
        _count(self.rounds, where, "rounds", 1, MAX_ROUNDS)


def sever_defense(cfg: SeverConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """SEVER with the victim's learner on ``ctx.train``; the defended model is the final fit."""
    name = cfg.label or cfg.name
    fit = _fitter(ctx, name)
    assert ctx.train is not None
    res = sever(fit, last_layer_gradient_fn(ctx.train), len(ctx.train), cfg.remove_fraction, cfg.rounds)
    extra = {**removal_report(res.removed, ctx), "retrained": True,
             "removed_per_round": [len(r) for r in res.removed_per_round], "singular_values": res.singular_values}
    return DefenseOutcome(res.model, extra=extra, removed=res.removed.copy())


# ------------------------------------------------------------------------------- certified
@dataclass
class CertifiedConfig:
    """``defenses:`` keys of the certified defense (Rosenfeld, Winston, Ravikumar, Kolter, ICML
    2020): ridge regression with penalty ``lam`` (an intercept column added, also penalised) on
    the flattened model inputs, smoothed over label noise ``q``; binary labels only. Defaults:
    ``q = 0.1`` (a label-noise rate of the paper's range) and ``lam = 1.0``; tune ``lam`` on
    clean validation data (``examples/certified_lambda.py``). ``curve_rows`` (200) test rows,
    drawn with the seed, and ``curve_max_r`` (null: the number of poisons) bound the report's
    certified accuracy (nothing is chosen on it)."""

    name: str = "certified"
    label: str | None = None
    q: float = 0.1
    lam: float = 1.0
    curve_rows: int = 200
    curve_max_r: int | None = None

    def validate(self, where: str = "defense") -> None:
        if not (is_number(self.q) and 0 < self.q < 0.5):
            _fail(where, "q", "a label-noise rate in (0, 0.5)", self.q)
        if not (is_number(self.lam) and self.lam > 0):
            _fail(where, "lam", "a number > 0", self.lam)
        need_number(self.lam, f"{where}.lam", 0, 1e12, low_open=True)
        _count(self.curve_rows, where, "curve_rows", 1, MAX_COUNT)
        if self.curve_max_r is not None:
            if not (is_whole(self.curve_max_r) and self.curve_max_r >= 0):
                _fail(where, "curve_max_r", "an integer >= 0 or null (the sweep's largest poison count)",
                      self.curve_max_r)
            need_int(self.curve_max_r, f"{where}.curve_max_r", 0, MAX_ROWS)

    clean_reference_metric = "target_vs_smoothed_clean"
    """The metric a subpopulation cell reports against :meth:`clean_reference`."""

    def clean_reference(self, clean: Dataset) -> nn.Module:
        """This defense's own procedure fitted on clean D: the reference its target damage is also
        measured against (the smoothed ridge differs from the victim's learner even without poison)."""
        return SmoothedRidgeClassifier(fit_smoothed_ridge(self, clean))

    def clean_report(self, clean: Dataset, test: Dataset, seed: int, most_poisons: int) -> dict[str, Any]:
        """Once per experiment, on clean D: certified accuracy against ``r = 0..max_r`` flipped
        training labels (``curve_max_r``, default ``most_poisons``, the largest cell's poison
        count) on ``curve_rows`` test rows drawn with ``seed`` (a report: nothing is chosen on
        it), and the smoothed classifier's accuracy on the whole test set."""
        start = time.perf_counter()
        max_r = self.curve_max_r if self.curve_max_r is not None else max(1, most_poisons)
        model = fit_smoothed_ridge(self, clean)
        accuracy = float((model.predict(_flat(test.x)) == test.y.numpy()).mean())
        curve, n = certified_accuracy_on(model, test, self.curve_rows, seed, max_r)
        return {"q": self.q, "lam": self.lam, "rows": int(n), "max_r": int(max_r),
                "smoothed_clean_accuracy": accuracy, "curve": [[r, acc] for r, acc in curve],
                "seconds": time.perf_counter() - start}


def _flat(x: torch.Tensor) -> np.ndarray:
    """Rows of ``x`` flattened to float64 features (the certified defense's input)."""
    return x.reshape(len(x), -1).double().numpy()


def fit_smoothed_ridge(cfg: CertifiedConfig, data: Dataset) -> SmoothedRidge:
    """The smoothed ridge classifier of ``cfg`` fitted on ``data`` (flattened inputs, labels 0/1)."""
    if data.num_classes != 2:
        raise PoisonlabError(f"defense '{cfg.label or cfg.name}' needs binary labels (2 classes); the data have "
                             f"{data.num_classes} classes")
    return SmoothedRidge(cfg.q, cfg.lam).fit(_flat(data.x), data.y.numpy())


class SmoothedRidgeClassifier(nn.Module):
    """A fitted :class:`~poisonlab.defenses.certified.SmoothedRidge` as a classifier module:
    ``forward(x)`` gives two logits per row, ``[-m, m]`` with ``m`` the expected score minus 1/2
    (float64; a margin that rounds to zero is kept at +-1e-30, so the argmax is the smoothed
    class in float32 too). :meth:`predict_rows` is the ridge's own prediction (one pass)."""

    def __init__(self, ridge: SmoothedRidge) -> None:
        super().__init__()
        self.ridge = ridge

    def predict_rows(self, x: torch.Tensor) -> np.ndarray:
        return self.ridge.predict(_flat(x.detach().cpu()))

    def certified_correct(self, x: torch.Tensor, y: np.ndarray, r: int) -> np.ndarray:
        """Per row of ``x``: predicted ``y`` and certified against ``r`` flipped training labels."""
        labels, certified = self.ridge.certify(_flat(x.detach().cpu()), r)
        return (labels == y) & certified

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = torch.from_numpy(self.ridge.expected_scores(_flat(x.detach().cpu())) - 0.5)
        margin = torch.where(margin > 0, margin.clamp(min=1e-30), margin.clamp(max=-1e-30))
        return torch.stack([-margin, margin], 1).to(x.device)


def certified_accuracy_on(ridge: SmoothedRidge, test: Dataset, n_rows: int, seed: int,
                          max_r: int) -> tuple[list[tuple[int, float]], int]:
    """``(curve, rows)``: certified accuracy against ``r = 0..max_r`` flipped training labels on
    ``n_rows`` test rows drawn with ``seed`` (at most all of them), and the rows used."""
    n = min(n_rows, len(test))
    rows = np.sort(np.random.default_rng([seed, 0x43525456]).choice(len(test), n, replace=False))
    labels, radii = ridge.radii(_flat(test.x[torch.as_tensor(rows)]), max_r)
    return curve_from_radii(labels == test.y.numpy()[rows], radii, max_r), int(n)


def certified_defense(cfg: CertifiedConfig, ctx: DefenseInputs) -> DefenseOutcome:
    """The smoothed ridge classifier fitted on ``ctx.train``. With ``ctx.test``, the report adds
    its certified accuracy on ``curve_rows`` test rows at ``r = curve_max_r`` flips (default:
    the number of poisons), read for the report only."""
    if ctx.train is None:
        raise PoisonlabError(f"defense '{cfg.label or cfg.name}' fits on the training set; none was given")
    ridge = fit_smoothed_ridge(cfg, ctx.train)
    extra: dict[str, Any] = {"q": cfg.q, "lam": cfg.lam, "features": int(np.prod(ctx.train.x.shape[1:])),
                             "train_rows": len(ctx.train)}
    if ctx.test is not None and len(ctx.test):
        r = cfg.curve_max_r if cfg.curve_max_r is not None else (
            int(ctx.poison_mask.sum()) if ctx.poison_mask is not None else 0)
        curve, n = certified_accuracy_on(ridge, ctx.test, cfg.curve_rows, ctx.seed, r)
        extra.update(certified_r=r, certified_rows=n, certified_accuracy=curve[-1][1])
    return DefenseOutcome(SmoothedRidgeClassifier(ridge), extra=extra)
