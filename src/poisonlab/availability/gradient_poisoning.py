"""Gradient poisoning of linear and kernel models (Biggio, Nelson & Laskov, "Poisoning Attacks
against Support Vector Machines", ICML 2012, arXiv 1206.6389; Demontis et al., "Why Do
Adversarial Attacks Transfer? Explaining Transferability of Evasion and Poisoning Attacks",
USENIX Security 2019).

``round(rate * N)`` poisons start as copies of random training rows with another label
(:func:`~poisonlab.availability.base.other_labels`) and are appended. Their labels stay; their
inputs climb the attacker's loss on its clean validation rows (``reference.val``: hinge loss
for an SVM, log loss for logistic regression, squared loss on +-1 targets for ridge) by
projected gradient ascent inside the feature box. The attacker's learner, the *surrogate*, is
refitted by the attack itself on the clean training rows plus the current poisons, and the
gradient is taken through its optimality conditions (:mod:`.implicit`). The victim the
pipeline then trains (``model:``) may be another learner: Demontis et al.'s transfer setting.

``surrogate: null`` is white box: the learner of the fitted clean reference (``SVC`` and
``LinearSVC`` -> svm with their C, kernel and gamma, ``LinearSVC`` approximated by the
hinge-loss ``SVC``; ``LogisticRegression`` -> logistic with its C; ``Ridge`` /
``RidgeClassifier`` -> ridge with its alpha); any other model needs ``surrogate:`` set. Past two
classes the SVM surrogate is one-vs-rest (the loss: the sum of its binary hinge losses; the
scikit-learn ``SVC`` victim is one-vs-one), logistic regression multinomial, ridge one output
per class. Images are flattened for the attack and returned in their shape.

The optimisation (``mode: sequential``, the papers' scheme): over ``passes`` passes, each poison
in turn takes up to ``steps`` steps along its normalised gradient ``d`` (unit l2 norm), each
step ``x <- P(x + t d)`` with ``P`` the projection on the box. The step length ``t`` comes from
a line search around the point's current ``eta`` (first ``step_size`` x the box diagonal),
every try a refit: ``eta / 2``, ``eta`` and ``2 eta`` are tried; when ``2 eta`` is the best, it
goes on doubling (at most 3 more) while the loss keeps rising; when ``eta / 2`` is the best or
no try raised the loss, it goes on halving (at most 6 more) while the loss rises further, or
until a try raises it. The best try is kept and its ``t`` becomes the point's next ``eta``; when
no try raised the loss the point stays where it is and stops, so the attacker's loss never
falls. A point also stops when a step raised the loss by at most ``tol``, or when its gradient
is zero (an SVM poison that is no support vector). ``mode: joint`` moves every poison at once
per step (each along its own normalised gradient, one ``t`` for all, the same line search),
``passes x steps`` steps in all: one gradient for all poisons per step instead of one per
point. The attacker's loss after every step (a step that stops a point without moving it
repeats the last value) is the report's ``val_loss_curve``, its first value the loss with
the initial label-flipped copies.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..attacks.base import ATTACKS, PoisonResult
from ..checks import is_number, need_int, need_number, one_key
from ..data.base import Dataset
from ..errors import PoisonlabError, shown
from .base import AvailabilityAttack, add_rows, other_labels
from .implicit import SmoothLearner, SurrogateSpec, SVMLearner, make_learner

LEARNERS = ("svm", "logistic", "ridge")
GROW, SHRINK = 3, 6
"""Doublings past ``2 eta`` and halvings past ``eta / 2`` a line search tries at most."""


@dataclass
class GradientPoisoningConfig:
    """``attack:`` keys of gradient poisoning."""

    name: str = "gradient-poisoning"
    rate: float = 0.05
    """Poisons, as a share of the clean training rows."""
    surrogate: dict[str, Any] | None = None
    """``{learner: svm|logistic|ridge, C, kernel: linear|rbf, gamma, alpha}``; null: the reference's."""
    box: str | list[float] = "auto"
    """``auto``: [0, 1] when the training inputs lie in it, else their per-feature range; or [low, high]."""
    steps: int = 20
    passes: int = 1
    step_size: float = 0.05
    """The first step length, as a share of the box diagonal."""
    tol: float = 1e-5
    mode: Literal["sequential", "joint"] = "sequential"


def parse_surrogate(raw: Any) -> SurrogateSpec | None:
    """``attack.surrogate`` as a :class:`SurrogateSpec` (None for null); one-line errors."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PoisonlabError(f"attack.surrogate must be a mapping {{learner: svm|logistic|ridge, ...}}, got {shown(raw)}")
    learner = raw.get("learner")
    if learner not in LEARNERS:
        raise PoisonlabError(f"attack.surrogate.learner must be svm, logistic or ridge, got {shown(learner)}")
    allowed = {"svm": ("learner", "C", "kernel", "gamma"), "logistic": ("learner", "C"),
               "ridge": ("learner", "alpha")}[learner]
    for key in raw:
        if key not in allowed:
            raise PoisonlabError(f"attack.surrogate.{one_key(key)} does not apply to learner {learner}; "
                                 f"its keys: {', '.join(allowed)}")
    for key in ("C", "alpha", "gamma"):
        if key in raw:
            need_number(raw[key], f"attack.surrogate.{key}", 0, 1e12, low_open=True)
    kernel = raw.get("kernel", "linear")
    if kernel not in ("linear", "rbf"):
        raise PoisonlabError(f"attack.surrogate.kernel must be linear or rbf, got {shown(kernel)}")
    if "gamma" in raw and kernel != "rbf":
        raise PoisonlabError("attack.surrogate.gamma applies to kernel: rbf only; remove it or set kernel: rbf")
    return SurrogateSpec(learner, float(raw.get("C", 1.0)), kernel,
                         float(raw["gamma"]) if "gamma" in raw else None, float(raw.get("alpha", 1.0)))


def infer_surrogate(model: Any, x: np.ndarray) -> SurrogateSpec:
    """The white-box surrogate of a fitted reference estimator; one-line error for any other model."""
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
    from sklearn.svm import SVC, LinearSVC

    est = getattr(model, "estimator", None)
    name = getattr(model, "name", type(model).__name__)
    fix = "set attack.surrogate: {learner: svm|logistic|ridge, ...}"
    if isinstance(est, SVC):
        if est.kernel not in ("linear", "rbf"):
            raise PoisonlabError(f"gradient poisoning differentiates linear and rbf kernels, the reference SVC has "
                                 f"kernel {shown(est.kernel)}; {fix}")
        gamma = None
        if est.kernel == "rbf":
            gamma = est.gamma if is_number(est.gamma) else 1.0 / x.shape[1] if est.gamma == "auto" else None
        return SurrogateSpec("svm", float(est.C), est.kernel, None if gamma is None else float(gamma))
    if isinstance(est, LinearSVC):
        return SurrogateSpec("svm", float(est.C), "linear")
    if isinstance(est, LogisticRegression):
        penalty = getattr(est, "penalty", "l2")
        if not (penalty == "l2" or (penalty == "deprecated" and not getattr(est, "l1_ratio", 0.0))):
            raise PoisonlabError(f"gradient poisoning differentiates l2-regularised logistic regression, the reference "
                                 f"has penalty {shown(penalty)}; {fix}")
        return SurrogateSpec("logistic", float(est.C))
    if isinstance(est, (Ridge, RidgeClassifier)) and is_number(est.alpha) and est.alpha > 0:
        return SurrogateSpec("ridge", alpha=float(est.alpha))
    raise PoisonlabError(f"gradient poisoning needs a surrogate learner: the model '{name}' is no SVM, logistic or "
                         f"ridge regression; {fix}")


def check_ascent(c: Any) -> None:
    """The keys of the projected ascent shared by gradient poisoning and OptP (one-line errors)."""
    need_int(c.steps, "attack.steps", 1, 10_000, "projected steps per point")
    need_int(c.passes, "attack.passes", 1, 100, "passes over the poisons")
    need_number(c.step_size, "attack.step_size", 0, 10, low_open=True, what="share of the box diagonal")
    need_number(c.tol, "attack.tol", 0, 1e6)
    if c.mode not in ("sequential", "joint"):
        raise PoisonlabError(f"attack.mode must be sequential or joint, got {shown(c.mode)}")


@ATTACKS.register("gradient-poisoning")
class GradientPoisoning(AvailabilityAttack):
    """Biggio et al.'s gradient poisoning, any of three surrogates (see module docstring)."""

    name = "gradient-poisoning"
    config_class = GradientPoisoningConfig

    def validate(self) -> None:
        c = self.cfg
        check_ascent(c)
        if isinstance(c.box, str):
            if c.box != "auto":
                raise PoisonlabError(f"attack.box must be auto or [low, high], got {shown(c.box)}")
        elif len(c.box) != 2 or not all(is_number(v) for v in c.box) or not c.box[0] < c.box[1]:
            raise PoisonlabError(f"attack.box must be auto or [low, high] with low < high, got {shown(c.box)}")
        self.spec = parse_surrogate(c.surrogate)

    def feature_box(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """Per-feature ``(low, high)`` and how they were chosen."""
        box = self.cfg.box
        if not isinstance(box, str):
            return np.full(x.shape[1], float(box[0])), np.full(x.shape[1], float(box[1])), "given"
        if x.min() >= 0 and x.max() <= 1:
            return np.zeros(x.shape[1]), np.ones(x.shape[1]), "unit"
        return x.min(0), x.max(0), "training range"

    def craft(self, train: Dataset, n_poison: int, reference: Any,
              rng: np.random.Generator) -> tuple[PoisonResult, dict[str, Any]]:
        start = time.perf_counter()
        val = getattr(reference, "val", None)
        if val is None or len(val) == 0:
            raise PoisonlabError("gradient poisoning climbs the attacker's loss on clean validation rows; "
                                 "set data.val_fraction > 0")
        shape, k = tuple(train.x.shape[1:]), train.num_classes
        x = train.x.detach().to("cpu", torch.float64).reshape(len(train), -1).numpy()
        y = train.y.detach().to("cpu", torch.int64).numpy()
        xv = val.x.detach().to("cpu", torch.float64).reshape(len(val), -1).numpy()
        yv = val.y.detach().to("cpu", torch.int64).numpy()
        spec = self.spec or infer_surrogate(getattr(reference, "model", None), x)
        learner = make_learner(spec, k, x)
        spec = dataclasses.replace(spec, gamma=getattr(learner, "gamma", None))  # "scale" resolved
        low, high, box_kind = self.feature_box(x)
        project = _projection(low, high, train.x.dtype)
        rows = np.sort(rng.choice(len(train), size=n_poison, replace=False))
        yp = other_labels(train.y[torch.from_numpy(rows)], k, rng).numpy()
        run = _Ascent(learner, (x, y), np.concatenate([x, project(x[rows])]), np.concatenate([y, yp]),
                      len(train) + np.arange(n_poison), xv, yv, project,
                      float(self.cfg.step_size) * float(np.linalg.norm(high - low)), float(self.cfg.tol))
        clean_error = float((learner.predict(run.clean_fit, xv) != yv).mean())
        initial_error = float((learner.predict(run.fit, xv) != yv).mean())
        if self.cfg.mode == "sequential":
            run.sequential(self.cfg.passes, self.cfg.steps)
        else:
            run.joint(self.cfg.passes * self.cfg.steps)
        xp = run.x[run.rows]
        result = add_rows(train, torch.from_numpy(rows), torch.from_numpy(xp).to(train.x.dtype).reshape(n_poison, *shape),
                          torch.from_numpy(yp))
        moved = np.linalg.norm(xp - project(x[rows]), axis=1)
        report = {"n_poison": n_poison, "mode": self.cfg.mode, "surrogate": spec.describe(), "box": box_kind,
                  "box_low": float(low.min()), "box_high": float(high.max()), "val_loss_clean": run.clean_loss,
                  "val_loss_initial": run.curve[0], "val_loss_final": run.curve[-1], "val_loss_curve": run.curve,
                  "surrogate_val_error_clean": clean_error, "surrogate_val_error_initial": initial_error,
                  "surrogate_val_error_final": float((learner.predict(run.fit, xv) != yv).mean()),
                  "steps_per_point": run.steps_taken.tolist(), "zero_gradient_steps": run.zero_steps,
                  "perturbation_l2_mean": float(moved.mean()), "fits": run.fits,
                  "seconds": time.perf_counter() - start}
        if run.zero_steps:
            report["note"] = (f"{run.zero_steps} step(s) met a zero gradient (an SVM poison that is no support "
                              "vector, alpha = 0, has no influence on the fit); those points stopped there")
        return result, report


def _projection(low: np.ndarray, high: np.ndarray, dtype: torch.dtype) -> Any:
    """``x ->`` ``x`` clipped to the box and rounded to the data's dtype, the bounds first moved
    inside to values of that dtype: what the attack returns lies in the box exactly."""
    lo = torch.from_numpy(low).to(dtype)
    hi = torch.from_numpy(high).to(dtype)
    if dtype in (torch.float32, torch.float64):
        lo = torch.where(lo.double() < torch.from_numpy(low), torch.nextafter(lo, torch.full_like(lo, np.inf)), lo)
        hi = torch.where(hi.double() > torch.from_numpy(high), torch.nextafter(hi, torch.full_like(hi, -np.inf)), hi)

    def project(x: np.ndarray) -> np.ndarray:
        clipped = torch.from_numpy(np.clip(x, low, high)).to(dtype)
        return torch.minimum(torch.maximum(clipped, lo), hi).double().numpy()

    return project


class _Ascent:
    """The poisons' projected gradient ascent on the surrogate's validation loss (see module docstring)."""

    def __init__(self, learner: SVMLearner | SmoothLearner, clean: tuple[np.ndarray, np.ndarray], x: np.ndarray,
                 y: np.ndarray, rows: np.ndarray, xv: np.ndarray, yv: np.ndarray, project: Any, eta: float,
                 tol: float) -> None:
        self.learner, self.x, self.y, self.rows, self.xv, self.yv = learner, x, y, rows, xv, yv
        self.project, self.eta0, self.tol = project, eta, tol
        self.fits, self.zero_steps = 0, 0
        self.steps_taken = np.zeros(len(rows), dtype=np.int64)
        self.fit = None
        self.clean_fit, self.clean_loss = self.refit(*clean)  # the surrogate without poisons
        self.fit = self.clean_fit
        self.fit, loss = self.refit(x, warm=self._warm())
        self.curve = [loss]

    def refit(self, x: np.ndarray, y: np.ndarray | None = None, warm: Any = None) -> tuple[Any, float]:
        self.fits += 1
        fit = self.learner.fit(x, self.y if y is None else y, warm)
        return fit, self.learner.loss(fit, self.xv, self.yv)

    def _warm(self) -> Any:
        return self.fit if isinstance(self.learner, SmoothLearner) else None

    def line_search(self, at: np.ndarray, direction: np.ndarray, eta: float) -> float | None:
        """Move the rows ``at`` along ``direction`` by the best step length tried (see module
        docstring); that length, or None when no try raised the loss (nothing moves)."""
        base, loss, warm = self.x[at], self.curve[-1], self._warm()
        seen: list[np.ndarray] = [base]

        def attempt(t: float) -> tuple[float, np.ndarray, Any, float] | None:
            moved = self.project(base + t * direction)
            if any(np.array_equal(moved, s) for s in seen):  # pinned to the box: a point already tried
                return None
            seen.append(moved)
            x = self.x.copy()
            x[at] = moved
            fit, new = self.refit(x, warm=warm)
            return t, x, fit, new

        tries = [got for got in map(attempt, (eta / 2, eta, 2 * eta)) if got is not None]
        best = max(tries, key=lambda g: g[3], default=None)
        if best is not None and best[0] == 2 * eta:
            for _ in range(GROW):
                got = attempt(best[0] * 2)
                if got is None or got[3] <= best[3]:
                    break
                best = got
        elif best is None or best[0] == eta / 2 or best[3] <= loss:
            t = eta / 2
            for _ in range(SHRINK):
                t /= 2
                got = attempt(t)
                if got is not None and (best is None or got[3] > best[3]):
                    best = got
                elif best is not None and best[3] > loss:
                    break
        if best is None or best[3] <= loss:
            return None
        t, self.x, self.fit, new = best
        self.curve.append(new)
        return t

    def _gradient(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grad, zero = self.learner.gradient(self.fit, self.x, self.y, at, self.xv, self.yv)
        norms = np.linalg.norm(grad, axis=1)
        zero = zero | (norms == 0) | ~np.isfinite(norms)
        return np.where(zero[:, None], 0.0, grad / np.where(zero, 1.0, norms)[:, None]), zero

    def sequential(self, passes: int, steps: int) -> None:
        for _ in range(passes):
            for i, row in enumerate(self.rows):
                at, eta = np.array([row]), self.eta0
                for _ in range(steps):
                    self.steps_taken[i] += 1
                    direction, zero = self._gradient(at)
                    before = self.curve[-1]
                    if zero[0]:
                        self.zero_steps += 1
                        self.curve.append(before)
                        break
                    t = self.line_search(at, direction, eta)
                    if t is None:
                        self.curve.append(before)
                        break
                    eta = t
                    if self.curve[-1] - before <= self.tol:
                        break

    def joint(self, steps: int) -> None:
        eta = self.eta0
        for _ in range(steps):
            self.steps_taken += 1
            direction, zero = self._gradient(self.rows)
            before = self.curve[-1]
            self.zero_steps += int(zero.sum())
            t = None if zero.all() else self.line_search(self.rows, direction, eta)
            if t is None:
                self.curve.append(before)
                break
            eta = t
            if self.curve[-1] - before <= self.tol:
                break
