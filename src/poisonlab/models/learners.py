"""One contract for every learner (issue 11, item 3): train it, say what it offers, fingerprint it.

Every learner is an ``nn.Module``: a torch network, or a scikit-learn estimator wrapped in
:class:`~poisonlab.models.estimators.EstimatorModel`. :func:`fit_learner` trains either
(torch networks through :func:`poisonlab.train.train_model`, unchanged; with ``train.trainable:
last`` only the last linear layer, :mod:`poisonlab.models.freeze`);
:func:`capabilities` declares what a learner offers, so that a mode or defense that needs
layers or gradients can refuse an estimator in one line; :func:`model_fingerprint` is a
digest of what the learner *is* (class, its source file when outside poisonlab, parameter
shapes or estimator parameters), for the baseline cache key.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..data.base import Dataset
from ..errors import PoisonlabError
from ..train import TrainConfig, TrainResult, train_model
from .estimators import EstimatorModel

CAPABILITIES = ("torch", "layers", "gradients", "proba", "estimator")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PACKAGE = Path(__file__).resolve().parent.parent


def is_torch(model: nn.Module) -> bool:
    """Whether ``model`` is a torch network with parameters (not a wrapped estimator)."""
    return not isinstance(model, EstimatorModel) and any(True for _ in model.parameters())


def capabilities(model: nn.Module) -> frozenset[str]:
    """What a learner offers: ``torch`` and ``gradients`` (a network with parameters), ``layers``
    (named conv/linear layers, :mod:`poisonlab.models.layers`), ``estimator`` (a wrapped
    scikit-learn estimator), ``proba`` (always: softmax of ``forward``).

    >>> from poisonlab.models import build_model
    >>> sorted(capabilities(build_model("mlp", (4,), 2)))
    ['gradients', 'layers', 'proba', 'torch']
    """
    caps = {"proba"}
    if isinstance(model, EstimatorModel):
        caps.add("estimator")
    elif is_torch(model):
        caps |= {"torch", "gradients"}
        if any(name and isinstance(m, _LAYER_TYPES) for name, m in model.named_modules()):
            caps.add("layers")
    return frozenset(caps)


def describe(model: nn.Module) -> str:
    """A learner's kind in words, for error messages."""
    if isinstance(model, EstimatorModel):
        return f"a scikit-learn estimator ({type(model.estimator).__name__})"
    return f"a torch network ({type(model).__name__})" if is_torch(model) else f"{type(model).__name__} without parameters"


def require(model: nn.Module, capability: str, what: str) -> None:
    """A one-line error unless ``model`` offers ``capability`` (``what`` names who needs it)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    if capability not in capabilities(model):
        need = {"torch": "a torch network", "gradients": "a torch network (gradients)",
                "layers": "a torch network with named conv/linear layers", "estimator": "a scikit-learn estimator",
                "proba": "class probabilities"}[capability]
        raise PoisonlabError(f"{what} needs {need}; the model is {describe(model)}")


def fit_learner(model: nn.Module, data: Dataset, train_cfg: TrainConfig, seed: int,
                device: torch.device | str = "cpu", val: Dataset | None = None, desc: str = "train") -> TrainResult:
    """Train ``model`` in place on ``data``: an estimator by ``fit_arrays`` (no epochs: history
    ``[]``, chosen epoch 0), a torch network by :func:`poisonlab.train.train_model` (same call,
    same weights)."""
    if isinstance(model, EstimatorModel):
        if train_cfg.trainable != "all":
            raise PoisonlabError("train.trainable 'last' needs a torch network; remove it for an estimator")
        if len(data) == 0:
            raise PoisonlabError("the training set is empty")
        start = time.perf_counter()
        model.fit_arrays(data.x, data.y, data.num_classes, seed)
        seconds = time.perf_counter() - start
        return TrainResult([], 0, seconds, len(data) / max(seconds, 1e-9))
    if not is_torch(model):
        raise PoisonlabError(f"cannot train {describe(model)}: it is neither a torch network with parameters "
                             "nor a scikit-learn estimator")
    if train_cfg.trainable == "last":
        from .freeze import fit_last_layer

        return fit_last_layer(model, data, train_cfg, seed, device, val, desc)
    return train_model(model, data, train_cfg, seed=seed, device=device, val=val, desc=desc)


def _source_file(cls: type) -> Path | None:
    """The file defining ``cls`` when it lies outside the poisonlab package, else ``None``."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return None if path.is_relative_to(_PACKAGE) or not path.is_file() else path


def _class_identity(cls: type) -> dict[str, str | None]:
    path = _source_file(cls)  # read each time: an edit within a file system's time tick still counts
    digest = None if path is None else hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "source": digest}


def model_fingerprint(model: nn.Module) -> str:
    """A digest of what ``model`` is: the module and qualified name of its class (and of every
    sub-module's class), the bytes of each such class's source file when it lives outside the
    poisonlab package (so editing a user's model file changes it; poisonlab's own files are in
    the code digest), and the parameter and buffer names, shapes and dtypes (torch) or
    ``get_params()`` (estimators). Weights are not part of it: it names the untrained learner."""
    if isinstance(model, EstimatorModel):
        est = model.estimator
        params = est.get_params(deep=True) if hasattr(est, "get_params") else {}
        params.pop("random_state", None)  # fit_arrays sets it to the seed (part of a cache key already)
        desc: dict = {"estimator": _class_identity(type(est)), "num_classes": model.num_classes,
                      "params": {str(k): repr(v) for k, v in sorted(params.items(), key=lambda kv: str(kv[0]))}}
    else:
        classes = {type(m) for m in model.modules()}
        desc = {"model": _class_identity(type(model)),
                "modules": sorted((_class_identity(c) for c in classes), key=lambda d: d["class"] or ""),
                "state": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]}
    return hashlib.blake2b(json.dumps(desc, sort_keys=True).encode(), digest_size=20).hexdigest()
