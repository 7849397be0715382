"""Adversarial choice of the labels to flip (``label-flip`` strategies ``greedy`` and ``alfa``).

* ``greedy`` (any learner, through a scikit-learn surrogate): each round draws ``candidates``
  unflipped rows, gives each another label (binary: the other class; multiclass: the other
  class the current surrogate scores highest at that row, its runner-up: flips between
  confusable classes beat the least likely or a random other class on digits with a linear
  SVM), refits the surrogate on the flips so far plus that one, and keeps the
  ``rounds_batch`` flips with the highest validation loss (``objective: loss``: the mean log
  loss when the surrogate has ``predict_proba``, else the mean multiclass hinge
  ``max(0, 1 + max_{j != y} s_j - s_y)`` of its decision values, for two classes the SVM hinge
  ``max(0, 1 - y f(x))``) or error (``objective: error``, ties broken by the loss). The greedy
  search of Biggio, Nelson & Laskov (2011, "Support vector machines under adversarial label
  noise", ACML) and Xiao et al. (2015, "Support vector machines under adversarial label
  contamination", Neurocomputing), with refits instead of closed-form updates.
* ``alfa`` (binary SVMs): the Adversarial Label Flip Attack of Xiao, Xiao & Eckert (ECAI 2012,
  "Adversarial label flips attack on support vector machines"). On the doubled set U = S plus
  S with every label flipped, with ``q_i + q_{i+n} = 1`` and ``sum_i q_{i+n} <= B``, it
  alternates (i) the LP ``min_q sum_i q_i (eps_i - psi_i)``, ``psi_i`` the hinge of the clean
  SVM f_S and ``eps_i`` that of the current tainted SVM at the points of U (``eps = 0`` at
  first), solved by :func:`scipy.optimize.linprog`, and (ii) the SVM fit on U weighted by q
  (the paper's QP; its gamma is the surrogate's own ``C``), until the flip set repeats; then
  flips the B rows with the largest q (ties: most negative LP cost).

The victim is never read: only the surrogate (a copy of the clean reference's estimator, or
the one ``attack.surrogate`` names) and the attacker's validation rows (the clean training
rows when there are none); never the test set."""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from ..errors import PoisonlabError, one_line, shown

LOG_EPS = 1e-12
SVM_CLASSES = ("SVC", "LinearSVC", "NuSVC")


# -- the surrogate ---------------------------------------------------------------------------
def check_surrogate_spec(spec: Any) -> None:
    """``attack.surrogate`` is null or ``{name: <model>, options: {...}}`` naming an estimator."""
    if spec is None:
        return
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or set(spec) - {"name", "options"}:
        raise PoisonlabError(f"attack.surrogate must be null or a mapping {{name: <model>, options: {{...}}}}, "
                             f"got {shown(spec)}")
    if not isinstance(spec.get("options", {}), dict):
        raise PoisonlabError(f"attack.surrogate.options must be a mapping, got {shown(spec['options'])}")
    from ..models import model_kind

    if model_kind(spec["name"]) == "torch":
        raise PoisonlabError(f"attack.surrogate '{one_line(spec['name'], 80)}' is a torch network; the surrogate is "
                             "refitted hundreds of times: name a scikit-learn estimator such as logistic-regression")


def surrogate_template(spec: dict[str, Any] | None, model: Any, input_shape: tuple[int, ...],
                       num_classes: int, strategy: str) -> tuple[Any, str]:
    """An unfitted scikit-learn estimator to refit, and its name: a clone of the reference's
    estimator (``spec`` null) or the model ``spec`` names (built by
    :func:`poisonlab.models.build_model`)."""
    from sklearn.base import clone

    from ..models import EstimatorModel, build_model
    from ..models.learners import describe

    if spec is None:
        if not isinstance(model, EstimatorModel):
            what = "no clean reference" if model is None else describe(model)
            raise PoisonlabError(f"attack.strategy {strategy} refits a scikit-learn surrogate and the reference is "
                                 f"{what}; set attack.surrogate to an estimator, e.g. {{name: logistic-regression}}")
        return clone(model.estimator), model.name
    check_surrogate_spec(spec)
    built = build_model(spec["name"], input_shape, num_classes, dict(spec.get("options") or {}))
    if not isinstance(built, EstimatorModel):
        raise PoisonlabError(f"attack.surrogate '{one_line(spec['name'], 80)}' is {describe(built)}; name a "
                             "scikit-learn estimator such as logistic-regression")
    return clone(built.estimator), built.name


def is_svm(estimator: Any) -> bool:
    """Whether ``estimator`` is one of scikit-learn's SVM classifiers (ALFA's learner)."""
    return type(estimator).__name__ in SVM_CLASSES and type(estimator).__module__.startswith("sklearn.svm")


def need_svm(estimator: Any) -> None:
    """A one-line error unless ``estimator`` is an SVM (ALFA attacks SVMs only)."""
    if not is_svm(estimator):
        raise PoisonlabError(f"attack.strategy alfa attacks an SVM; the surrogate is {type(estimator).__name__}: set "
                             "attack.surrogate to {name: linear-svm} (or kernel-svm), or use strategy greedy")


def check_learner(strategy: str, spec: dict[str, Any] | None, model: Any) -> None:
    """Before training: the surrogate (``spec``, else the victim ``model`` whose clean fit is the
    reference) is a scikit-learn estimator that builds, and an SVM for ``alfa``."""
    from ..models import EstimatorModel

    if strategy == "random" and spec is None:
        return
    if spec is not None:
        template, _ = surrogate_template(spec, None, (1,), 2, strategy)
    elif isinstance(model, EstimatorModel):
        template = model.estimator
    else:
        surrogate_template(None, model, (1,), 2, strategy)  # its one-line error
    if strategy == "alfa":
        need_svm(template)


def fit(template: Any, x: np.ndarray, y: np.ndarray, seed: int, weight: np.ndarray | None = None) -> Any:
    """A fresh clone of ``template`` fitted on ``x``, ``y`` (``random_state`` = ``seed``)."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    est = clone(template)
    if "random_state" in est.get_params(deep=False):
        est.set_params(random_state=int(seed) % 2**32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(x, y) if weight is None else est.fit(x, y, sample_weight=weight)
    except (ValueError, TypeError) as exc:
        raise PoisonlabError(f"the label-flip surrogate {type(template).__name__} could not be fitted "
                             f"({type(exc).__name__}: {one_line(str(exc), 300)})") from None
    return est


def class_scores(est: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, num_classes) scores: log-probabilities (``predict_proba``) or decision values (two
    classes: ``[-d/2, d/2]``); a class the fit never saw scores below every real one."""
    cols = np.asarray(est.classes_).astype(np.int64)
    if hasattr(est, "predict_proba"):
        out = np.full((len(x), num_classes), np.log(LOG_EPS))
        out[:, cols] = np.log(np.clip(est.predict_proba(x), LOG_EPS, None))
        return out
    d = np.asarray(est.decision_function(x), dtype=np.float64)
    scores = np.stack([-d / 2, d / 2], 1) if d.ndim == 1 else d
    out = np.repeat((scores.min(1) - 1.0)[:, None], num_classes, 1)
    out[:, cols] = scores
    return out


def loss_name(est: Any) -> str:
    """``log-loss`` (the estimator has ``predict_proba``) or ``hinge`` (decision values)."""
    return "log-loss" if hasattr(est, "predict_proba") else "hinge"


def scores_of(est: Any, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Mean loss (log loss or multiclass hinge, :func:`loss_name`) and error of ``est`` on ``x``, ``y``."""
    s = class_scores(est, x, num_classes)
    rows = np.arange(len(y))
    if hasattr(est, "predict_proba"):
        loss = -s[rows, y]
    else:
        other = s.copy()
        other[rows, y] = -np.inf
        loss = np.maximum(0.0, 1.0 + other.max(1) - s[rows, y])
    error = np.mean(np.asarray(est.predict(x)).astype(np.int64) != y)
    return float(np.mean(loss)), float(error)


# -- greedy ----------------------------------------------------------------------------------
def flip_labels(est: Any, x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """The label each candidate row gets: the other class (binary), else the other class the
    current surrogate ``est`` scores highest at the row (its runner-up)."""
    if num_classes == 2:
        return 1 - y
    s = class_scores(est, x, num_classes)
    s[np.arange(len(y)), y] = -np.inf
    return s.argmax(1)


def greedy_flips(x: np.ndarray, y: np.ndarray, num_classes: int, n_flip: int, template: Any,
                 x_val: np.ndarray, y_val: np.ndarray, rng: np.random.Generator, *, candidates: int = 20,
                 rounds_batch: int = 1, objective: str = "loss", seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows to flip, their new labels and a report (module docstring: ``greedy``)."""
    if not 0 < n_flip <= len(y):
        raise PoisonlabError(f"label flipping needs 1..{len(y)} flips, got {n_flip}")
    tainted = y.copy()
    flipped = np.zeros(len(y), dtype=bool)
    current = fit(template, x, tainted, seed)
    before = scores_of(current, x_val, y_val, num_classes)
    fits, rounds = 1, 0
    pick = 1 if objective == "error" else 0  # which of (loss, error) leads; the other breaks ties
    while flipped.sum() < n_flip:
        pool = np.flatnonzero(~flipped)
        rows = rng.choice(pool, size=min(candidates, len(pool)), replace=False)
        labels = flip_labels(current, x[rows], y[rows], num_classes)
        trials: list[tuple[tuple[float, float], Any]] = []
        for row, label in zip(rows, labels):
            trial = tainted.copy()
            trial[row] = label
            est = fit(template, x, trial, seed)
            sc = scores_of(est, x_val, y_val, num_classes)
            trials.append(((sc[pick], sc[1 - pick]), est))
        fits += len(rows)
        take = min(rounds_batch, n_flip - int(flipped.sum()))
        best = sorted(range(len(rows)), key=lambda i: trials[i][0], reverse=True)[:take]  # stable: first drawn wins ties
        tainted[rows[best]] = labels[best]
        flipped[rows[best]] = True
        if take == 1:
            current = trials[best[0]][1]
        else:
            current, fits = fit(template, x, tainted, seed), fits + 1
        rounds += 1
    after = scores_of(current, x_val, y_val, num_classes)
    chosen = np.flatnonzero(flipped)
    return chosen, tainted[chosen], {"val_loss_before": before[0], "val_loss_after": after[0],
                                     "val_error_before": before[1], "val_error_after": after[1],
                                     "loss": loss_name(current), "fits": fits, "rounds": rounds}


# -- ALFA ------------------------------------------------------------------------------------
def hinge(margin: np.ndarray) -> np.ndarray:
    """The SVM hinge ``max(0, 1 - y f(x))`` of signed margins (ALFA's loss V, Xiao et al. 2012)."""
    return np.maximum(0.0, 1.0 - margin)


def alfa_lp(keep_cost: np.ndarray, flip_cost: np.ndarray, budget: int) -> np.ndarray:
    """The relaxed label-choice LP of ALFA (Xiao et al. 2012, eq. 8): ``min c.q`` over
    ``q = (q_keep, q_flip)`` in [0, 1]^{2n} with ``q_keep + q_flip = 1`` and
    ``sum q_flip <= budget``; returns ``q_flip``."""
    from scipy import sparse
    from scipy.optimize import linprog

    n = len(keep_cost)
    eye = sparse.identity(n, format="csr")
    a_eq = sparse.hstack([eye, eye], format="csr")
    a_ub = sparse.hstack([sparse.csr_matrix((1, n)), sparse.csr_matrix(np.ones((1, n)))], format="csr")
    res = linprog(np.concatenate([keep_cost, flip_cost]), A_ub=a_ub, b_ub=[float(budget)], A_eq=a_eq,
                  b_eq=np.ones(n), bounds=(0.0, 1.0), method="highs")
    if res.status != 0:
        raise PoisonlabError(f"the ALFA linear program failed ({one_line(str(res.message), 200)})")
    return np.clip(res.x[n:], 0.0, 1.0)


def alfa_flips(x: np.ndarray, y: np.ndarray, n_flip: int, template: Any, x_val: np.ndarray, y_val: np.ndarray,
               *, iterations: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows to flip (binary labels 0/1), their new labels and a report (module docstring: ``alfa``)."""
    if not 0 < n_flip <= len(y):
        raise PoisonlabError(f"label flipping needs 1..{len(y)} flips, got {n_flip}")
    need_svm(template)
    if not np.isin(y, (0, 1)).all():
        raise PoisonlabError("attack.strategy alfa is for binary tasks (labels 0 and 1)")
    sign = 2.0 * y - 1.0
    clean = fit(template, x, y, seed)
    d0 = clean.decision_function(x)
    psi_keep, psi_flip = hinge(sign * d0), hinge(-sign * d0)
    eps_keep, eps_flip = np.zeros(len(y)), np.zeros(len(y))
    x2, y2 = np.concatenate([x, x]), np.concatenate([y, 1 - y])
    fits, chosen, previous, converged, it = 1, np.zeros(0, dtype=np.int64), None, False, 0
    tainted = clean
    for it in range(1, iterations + 1):
        cost = (eps_flip - psi_flip) - (eps_keep - psi_keep)
        q = alfa_lp(eps_keep - psi_keep, eps_flip - psi_flip, n_flip)
        weight = np.concatenate([1.0 - q, q])
        used = weight > 1e-9
        tainted = fit(template, x2[used], y2[used], seed, weight[used])
        fits += 1
        d = tainted.decision_function(x)
        eps_keep, eps_flip = hinge(sign * d), hinge(-sign * d)
        chosen = np.sort(np.lexsort((cost, -q))[:n_flip])  # largest q first, then most negative cost
        if previous is not None and np.array_equal(chosen, previous):
            converged = True
            break
        previous = chosen
    labels = 1 - y[chosen]
    final_y = y.copy()
    final_y[chosen] = labels
    after_est = fit(template, x, final_y, seed)
    before, after = scores_of(clean, x_val, y_val, 2), scores_of(after_est, x_val, y_val, 2)
    return chosen, labels, {"val_loss_before": before[0], "val_loss_after": after[0], "val_error_before": before[1],
                            "val_error_after": after[1], "loss": loss_name(clean), "fits": fits + 1,
                            "iterations": it, "converged": converged}


def reference_loss(model: Any, x_val: np.ndarray, y_val: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The fitted clean reference's validation loss and error (``val_*_before``; no fit), or
    nothing when it is not a fitted scikit-learn estimator."""
    from ..models import EstimatorModel

    if not isinstance(model, EstimatorModel) or not hasattr(model.estimator, "classes_"):
        return {"fits": 0}
    loss, error = scores_of(model.estimator, x_val, y_val, num_classes)
    return {"val_loss_before": loss, "val_error_before": error, "loss": loss_name(model.estimator), "fits": 0}


def report_loss(template: Any, x: np.ndarray, y: np.ndarray, rows: np.ndarray, labels: np.ndarray, num_classes: int,
                x_val: np.ndarray, y_val: np.ndarray, seed: int) -> dict[str, Any]:
    """The surrogate's validation loss and error before and after the flips ``rows`` -> ``labels``
    (for the random strategy)."""
    tainted = y.copy()
    tainted[rows] = labels
    clean, after = fit(template, x, y, seed), fit(template, x, tainted, seed)
    b, a = scores_of(clean, x_val, y_val, num_classes), scores_of(after, x_val, y_val, num_classes)
    return {"val_loss_before": b[0], "val_loss_after": a[0], "val_error_before": b[1], "val_error_after": a[1],
            "loss": loss_name(clean), "fits": 2}


# -- the attack's call -----------------------------------------------------------------------
def _arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A Dataset's rows flattened to float64 (N, D) and its labels as int64 (the estimators' view)."""
    x = data.x.detach().to("cpu").double().reshape(len(data), -1).numpy()
    return x, data.y.detach().to("cpu").long().numpy()


def choose_flips(cfg: Any, train: Any, n_flip: int, reference: Any, rng: np.random.Generator,
                 random_pick: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The flips of ``cfg.strategy`` (``random_pick``: the random strategy's rows and labels,
    drawn by the caller) and the report: the surrogate's validation loss and error before and
    after, its fits and the seconds. A random pick without ``surrogate`` reports only the
    fitted reference's loss before (no refit; nothing for a torch reference)."""
    start = time.perf_counter()
    model = getattr(reference, "model", None)
    seed = int(getattr(reference, "seed", 0) or 0)
    val = getattr(reference, "val", None)
    has_val = val is not None and len(val) > 0
    info: dict[str, Any] = {"objective_rows": "validation" if has_val else "training"}
    if cfg.strategy == "random" and cfg.surrogate is None:  # the cheap baseline stays cheap: no copy, no fit
        assert random_pick is not None
        x_val, y_val = _arrays(val if has_val else train)
        report = reference_loss(model, x_val, y_val, train.num_classes)
        name = getattr(model, "name", None) if "loss" in report else None
        return (*random_pick, {**info, "surrogate": name, **report, "seconds": time.perf_counter() - start})
    x, y = _arrays(train)
    x_val, y_val = _arrays(val) if has_val else (x, y)
    template, name = surrogate_template(cfg.surrogate, model, tuple(train.x.shape[1:]), train.num_classes,
                                        cfg.strategy)
    if cfg.strategy == "random":
        assert random_pick is not None
        rows, labels = random_pick
        report = report_loss(template, x, y, rows, labels, train.num_classes, x_val, y_val, seed)
    elif cfg.strategy == "greedy":
        rows, labels, report = greedy_flips(x, y, train.num_classes, n_flip, template, x_val, y_val, rng,
                                            candidates=cfg.candidates, rounds_batch=cfg.rounds_batch,
                                            objective=cfg.objective, seed=seed)
        report = {**report, "objective": "error" if cfg.objective == "error" else report["loss"]}
    else:
        rows, labels, report = alfa_flips(x, y, n_flip, template, x_val, y_val, iterations=cfg.iterations, seed=seed)
    return rows, labels, {**info, "surrogate": name, **report, "seconds": time.perf_counter() - start}
