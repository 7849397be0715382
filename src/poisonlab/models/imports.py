"""Bring-your-own models named by import path (issue 11, item 3; docs/security.md: code a user
names on purpose is trusted, a config alone cannot make poisonlab run code).

``model: {name: "mypkg.nets:MyNet"}`` imports module ``mypkg.nets`` (the Python import habit,
like a scikit-learn pipeline: no switch needed) and takes its attribute ``MyNet``;
``name: "./mynet.py:MyNet"`` (a path ending in ``.py``, relative to the current folder or
absolute) executes that file, so it is loaded only while trust-code is on
(:func:`set_trust_code`, :func:`trusting_code`; the CLI's ``--trust-code``).

Before anything is called the attribute must be a class deriving from ``torch.nn.Module``
or ``sklearn.base.BaseEstimator`` (``os:system``, ``subprocess:Popen``, ``json:loads`` are
refused). A torch class is built as ``cls(**options)`` plus, when its constructor names
them, ``num_classes=`` and the first of ``input_shape=``/``in_shape=`` (the shape without
the batch), ``in_channels=``, ``in_features=`` (the product of the shape); an estimator
class is wrapped in :class:`~poisonlab.models.estimators.EstimatorModel`. Every failure is
one line.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import PoisonlabError, did_you_mean, one_line, shown
from .estimators import EstimatorModel, check_plain, make_estimator

_TRUST_CODE = False
SHAPE_ARGS = ("input_shape", "in_shape", "in_channels", "in_features")


def set_trust_code(flag: bool) -> None:
    """Allow (``True``) or refuse (``False``) model names that execute a ``.py`` file, process-wide."""
    global _TRUST_CODE
    _TRUST_CODE = bool(flag)


def trust_code() -> bool:
    """Whether model files may be executed now."""
    return _TRUST_CODE


@contextmanager
def trusting_code(flag: bool = True) -> Iterator[None]:
    """Trust-code set to ``flag`` inside the block, restored after it."""
    old = _TRUST_CODE
    set_trust_code(flag)
    try:
        yield
    finally:
        set_trust_code(old)


def is_import_path(name: object) -> bool:
    """Whether a model name is an import path (``module:Class`` or ``file.py:Class``)."""
    return isinstance(name, str) and ":" in name


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(str(exc), 300)}"


def _split(name: str) -> tuple[str, list[str]]:
    target, _, attr = name.rpartition(":")
    parts = attr.split(".")
    if not target or not all(p.isidentifier() for p in parts):
        raise PoisonlabError(f"model '{name}' is not an import path 'package.module:Class' or 'file.py:Class'")
    return target, parts


def _load_file(name: str, target: str) -> Any:
    if not _TRUST_CODE:
        raise PoisonlabError(f"model '{name}' runs the file {target}; pass --trust-code to allow it")
    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise PoisonlabError(f"model '{name}': the file {target} does not exist (paths are relative to the "
                             f"current folder, {Path.cwd()})")
    path = path.resolve()
    digest = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    modname = f"_poisonlab_model_{stem}_{digest}"
    try:
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module  # so that inspect, dataclasses and pickle find it
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (a user file may raise anything)
        sys.modules.pop(modname, None)
        raise PoisonlabError(f"model '{name}': running the file {target} raised {_error(exc)}") from None
    return module


def _load_module(name: str, target: str) -> Any:
    if not all(p.isidentifier() for p in target.split(".")):
        raise PoisonlabError(f"model '{name}': '{one_line(target, 200)}' is neither a Python module path "
                             "(package.module) nor a file ending in .py")
    try:
        return importlib.import_module(target)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (a module may raise anything on import)
        raise PoisonlabError(f"model '{name}': cannot import module '{target}' ({_error(exc)})") from None


def resolve_class(name: str) -> type:
    """The class an import path names, checked to derive from ``nn.Module`` or ``BaseEstimator``
    (a file is executed only with trust-code on); nothing of it is called."""
    from sklearn.base import BaseEstimator

    if len(name) > 1000 or not name.isprintable():
        raise PoisonlabError(f"model name {shown(name)} is not an import path 'package.module:Class' or 'file.py:Class'")
    target, parts = _split(name)
    is_file = target.endswith(".py")
    obj = _load_file(name, target) if is_file else _load_module(name, target)
    where = f"the file {target}" if is_file else f"module '{target}'"
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except Exception:  # noqa: BLE001  (a module's __getattr__ may raise anything)
            known = [k for k in dir(obj) if not k.startswith("_")] if i == 0 else []
            raise PoisonlabError(f"model '{name}': {where} has no attribute '{'.'.join(parts[:i + 1])}'"
                                 f"{did_you_mean(part, known)}") from None
    if not (inspect.isclass(obj) and issubclass(obj, (nn.Module, BaseEstimator))):
        raise PoisonlabError(f"model '{name}' is not a class deriving from torch.nn.Module or "
                             "sklearn.base.BaseEstimator; name a network or estimator class")
    return obj


def _constructor_args(cls: type) -> tuple[set[str], bool]:
    """Names the constructor takes by keyword, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds}, any(p.kind == p.VAR_KEYWORD for p in params)


def _build_torch(cls: type, name: str, shape: tuple[int, ...], num_classes: int, options: dict) -> nn.Module:
    accepted, var_kw = _constructor_args(cls)
    inject: dict[str, Any] = {}
    if "num_classes" in accepted:
        inject["num_classes"] = num_classes
    values = {"input_shape": tuple(shape), "in_shape": tuple(shape), "in_channels": shape[0] if shape else 1,
              "in_features": math.prod(shape)}
    for key in SHAPE_ARGS:
        if key in accepted:
            inject[key] = values[key]
            break
    for key in options:
        if key in inject:
            raise PoisonlabError(f"model.options.{key} of model '{name}' is set by poisonlab from the data; remove it")
        if not var_kw and key not in accepted:
            known = sorted(accepted)
            raise PoisonlabError(f"model '{name}' has no option '{one_line(str(key), 80)}'{did_you_mean(str(key), known)}"
                                 f"; its constructor takes: {', '.join(known) or 'nothing'}")
    try:
        model = cls(**options, **inject)
    except Exception as exc:  # noqa: BLE001  (one line, whatever the constructor raises)
        raise PoisonlabError(f"model '{name}': building {cls.__name__}(...) raised {_error(exc)}") from None
    if not isinstance(model, nn.Module):
        raise PoisonlabError(f"model '{name}': {cls.__name__}(...) did not return an nn.Module")
    return model


def build_imported(name: str, shape: tuple[int, ...], num_classes: int, options: dict | None = None) -> nn.Module:
    """The model an import path names, built for inputs of ``shape`` and ``num_classes`` classes."""
    options = dict(options or {})
    for key, value in options.items():
        if not isinstance(key, str):
            raise PoisonlabError(f"model.options keys must be strings, got {key!r}")
        check_plain(value, f"model.options.{key}")
    cls = resolve_class(name)
    if issubclass(cls, nn.Module):
        return _build_torch(cls, name, tuple(shape), num_classes, options)
    if not (hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise PoisonlabError(f"model '{name}' is an estimator without fit/predict methods; name a classifier")
    return EstimatorModel(make_estimator(cls, name, options), num_classes, name)
