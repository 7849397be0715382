"""What regression data (``data.options.task: regression``; Jagielski et al., "Manipulating
Machine Learning", S&P 2018, arXiv 1804.00308) may run with, checked before any training: a
regressor as the model (``ols``, ``ridge-regression``, ``lasso``, ``elastic-net``), the
``availability`` family, an attack that declares ``regression = True`` (``statp``, ``optp``,
``label-flip`` with ``strategy: random``) and defenses that do (``trim``). Anything else is a
one-line error naming what is not supported for regression; a regressor on classification data
is one too."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PoisonlabError

REGRESSORS = "ols, ridge-regression, lasso or elastic-net"
WHY = "the data are regression (data.options.task: regression)"


def check_task(ctx: Any, model: nn.Module) -> None:
    """One-line error when the model, family, attack, defenses or optional steps do not fit the task."""
    regression = ctx.train.is_regression
    regressor = bool(getattr(model, "regression", False))
    name = ctx.cfg.model.name
    if not regression:
        if regressor:
            raise PoisonlabError(f"model '{name}' is a regressor, but the data have classes; use a classifier, or "
                                 "data.options.task: regression for a table with a numeric response")
        return
    if not regressor:
        raise PoisonlabError(f"model '{name}' is a classifier; {WHY}: use {REGRESSORS}")
    if ctx.attack is None:
        raise PoisonlabError(f"{WHY}: they run in the availability family only; add an attack: statp, optp or "
                             "label-flip")
    if ctx.family.name != "availability" or not getattr(ctx.attack, "regression", False):
        raise PoisonlabError(f"attack '{ctx.attack.name}' is not supported for regression ({WHY}); use statp, optp "
                             "or label-flip (strategy: random)")
    for label, cfg in ctx.defenses:
        if not getattr(cfg, "regression", False):
            raise PoisonlabError(f"defense '{label}' is not supported for regression ({WHY}); use trim")
    others = [getattr(e, "key", type(e).__name__) for e in ctx.extras if not getattr(e, "regression", False)]
    if others:
        raise PoisonlabError(f"optional steps ({', '.join(others)}) are not supported for regression ({WHY}); "
                             "remove them")
