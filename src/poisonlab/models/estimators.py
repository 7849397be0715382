"""scikit-learn estimators as ``nn.Module`` learners (issue 11, item 3).

:class:`EstimatorModel` wraps anything with ``fit``/``predict`` so that the rest of poisonlab
(:func:`poisonlab.train.predict_logits`, evaluation, defenses that only read outputs) treats
it like a network: ``forward(x)`` returns float32 logits (N, num_classes), namely
``log(predict_proba)`` (clipped at 1e-12) placed on the columns of ``estimator.classes_``,
else ``decision_function`` scores, else a one-hot of ``predict``. A regressor (``ols``,
``ridge-regression``, ``lasso``, ``elastic-net``; :attr:`EstimatorModel.regression`) is fitted on
float responses and ``forward`` returns its prediction as one column (N, 1) (Jagielski et al.,
S&P 2018, poison these learners). It has no parameters, so
its ``state_dict()`` is empty; it is trained by :meth:`EstimatorModel.fit_arrays` (through
:func:`poisonlab.models.learners.fit_learner`), not by the gradient trainer.

:func:`estimator_builder` makes the registry builders of ``logistic-regression``,
``random-forest``... (``model.options`` become keyword arguments, checked against
``get_params()``).
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PoisonlabError, did_you_mean, one_line, shown

LOG_EPS = math.log(1e-12)
MAX_OPTION_LIST = 10_000


class EstimatorModel(nn.Module):
    """A scikit-learn estimator seen as an ``nn.Module`` (no parameters, empty state dict).

    >>> from sklearn.linear_model import LogisticRegression
    >>> m = EstimatorModel(LogisticRegression(), 3)
    >>> _ = m.fit_arrays(torch.tensor([[0.], [1.], [4.], [5.]]), torch.tensor([0, 0, 1, 1]), 3, seed=0)
    >>> m(torch.tensor([[0.], [5.]])).argmax(1).tolist(), m(torch.zeros(1, 1)).shape, len(m.state_dict())
    ([0, 1], torch.Size([1, 3]), 0)
    """

    def __init__(self, estimator: Any, num_classes: int, name: str | None = None) -> None:
        super().__init__()
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise PoisonlabError(f"model '{name or type(estimator).__name__}' has no fit/predict methods; "
                                 "name a classifier")
        self.estimator = estimator
        self.num_classes = int(num_classes)
        self.name = name or type(estimator).__name__
        self.regression = is_regressor(estimator)
        """A regressor: fitted on float responses, ``forward`` gives (N, 1) predictions."""

    def extra_repr(self) -> str:
        return f"{self.name}: {one_line(repr(self.estimator), 200)}, num_classes={self.num_classes}"

    def fit_arrays(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> EstimatorModel:
        """Fit on ``x`` flattened to float64 (N, -1) and labels ``y``; ``random_state`` (when the
        estimator has one) is set to ``seed``, so the same seed gives the same model."""
        if len(x) == 0:
            raise PoisonlabError("the training set is empty")
        self.num_classes = int(num_classes)
        params = self.estimator.get_params(deep=False) if hasattr(self.estimator, "get_params") else {}
        if "random_state" in params:
            self.estimator.set_params(random_state=int(seed) % 2**32)
        xs = _features(x)
        ys = y.detach().to("cpu", torch.float64 if self.regression else torch.int64).numpy()
        try:
            self.estimator.fit(xs, ys)
        except (ValueError, TypeError) as exc:  # sklearn's parameter and data errors
            raise PoisonlabError(f"model '{self.name}' could not be fitted ({type(exc).__name__}: "
                                 f"{one_line(str(exc), 300)}); check model.options") from None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        est = self.estimator
        if self.regression:
            if not hasattr(est, "coef_") and not hasattr(est, "n_features_in_"):
                raise PoisonlabError(f"model '{self.name}' is not fitted yet; train it before predicting")
            pred = np.asarray(est.predict(_features(x)), dtype=np.float64).reshape(len(x), 1)
            return torch.from_numpy(pred.astype(np.float32)).to(x.device)
        if not hasattr(est, "classes_"):
            raise PoisonlabError(f"model '{self.name}' is not fitted yet; train it before predicting")
        xs = _features(x)
        n, c = len(xs), self.num_classes
        cols = _columns(np.asarray(est.classes_), c, self.name)
        if hasattr(est, "predict_proba"):
            out = np.full((n, c), LOG_EPS)
            out[:, cols] = np.log(np.clip(np.asarray(est.predict_proba(xs), dtype=np.float64), 1e-12, None))
        elif hasattr(est, "decision_function"):
            d = np.asarray(est.decision_function(xs), dtype=np.float64)
            scores = np.stack([-d / 2, d / 2], 1) if d.ndim == 1 else d.reshape(n, -1)
            fill = scores.min(1, initial=0.0) + LOG_EPS  # below every real score of the row
            out = np.repeat(fill[:, None], c, 1)
            out[:, cols] = scores
        else:
            pred = _columns(np.asarray(est.predict(xs)), c, self.name)
            out = np.zeros((n, c))
            out[np.arange(n), pred] = 1.0
        return torch.from_numpy(out.astype(np.float32)).to(x.device)


def is_regressor(estimator: Any) -> bool:
    """Whether ``estimator`` is a scikit-learn regressor (its tags, else ``_estimator_type``)."""
    try:
        from sklearn.base import is_regressor as sk_is_regressor

        return bool(sk_is_regressor(estimator))
    except Exception:  # noqa: BLE001  (an object that is no scikit-learn estimator)
        return getattr(estimator, "_estimator_type", None) == "regressor"


def _features(x: torch.Tensor) -> np.ndarray:
    """Rows of ``x`` flattened to a float64 (N, D) array on the CPU."""
    return x.detach().to("cpu", torch.float64).reshape(len(x), -1).numpy()


def _columns(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Class labels as column indices 0..num_classes-1 (an estimator's ``classes_`` or predictions)."""
    try:
        cols = labels.astype(np.int64)
    except (TypeError, ValueError):
        cols = None
    if cols is None or not np.array_equal(cols, labels) or (len(cols) and (cols.min() < 0 or cols.max() >= num_classes)):
        raise PoisonlabError(f"model '{name}' predicts classes {shown(labels.tolist())}, not class indices "
                             f"0..{num_classes - 1}")
    return cols


def check_plain(value: Any, where: str) -> None:
    """``value`` must be a plain YAML scalar (null, bool, number, string) or a list of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)) and len(value) <= MAX_OPTION_LIST:
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    raise PoisonlabError(f"{where} must be a number, string, true/false, null or a list of them, got {shown(value)}")


def make_estimator(cls: Callable[..., Any], name: str, options: dict[str, Any],
                   defaults: dict[str, Any] | None = None) -> Any:
    """``cls(**defaults, **options)``, every option checked against ``cls().get_params()`` first
    (``random_state`` is the run's seed, set by :meth:`EstimatorModel.fit_arrays`)."""
    for key, value in options.items():
        check_plain(value, f"model.options.{key}")
    try:
        known = sorted(cls(**(defaults or {})).get_params(deep=False))
    except Exception as exc:  # noqa: BLE001  (a user's estimator class may raise anything)
        raise PoisonlabError(f"model '{name}': building it raised {type(exc).__name__}: {one_line(str(exc), 300)}") from None
    for key in options:
        if key == "random_state":
            raise PoisonlabError(f"model.options.random_state of model '{name}' is set from the run's seed; remove it "
                                 "(change the seed instead)")
        if key not in known:
            raise PoisonlabError(f"model '{name}' has no option '{one_line(str(key), 80)}'{did_you_mean(str(key), known)}; "
                                 f"options: {', '.join(known)}")
    try:
        return cls(**{**(defaults or {}), **options})
    except Exception as exc:  # noqa: BLE001  (one line, whatever the class raises)
        raise PoisonlabError(f"model '{name}': building it with model.options raised {type(exc).__name__}: "
                             f"{one_line(str(exc), 300)}") from None


def estimator_builder(target: str, name: str, **defaults: Any) -> Callable[[tuple[int, ...], int, dict], nn.Module]:
    """A registry builder for the estimator class ``target`` ("module:Class", imported when first
    built, so that ``import poisonlab`` stays fast) with default keyword arguments ``defaults``."""
    module, attr = target.split(":")

    def build(shape: tuple[int, ...], num_classes: int, options: dict) -> nn.Module:
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise PoisonlabError(f"model '{name}' needs the {module.split('.')[0]} package ({exc}); "
                                 f"pip install {module.split('.')[0]}") from None
        return EstimatorModel(make_estimator(cls, name, options, defaults), num_classes, name)

    return build
