"""Victim and attacker learners of the subpopulation attack (Jagielski et al., CCS 2021, Sec. 5).

A :class:`LearnerSpec` names a learner of the model registry (``mlp`` with ``hidden: []`` is
logistic regression, ``hidden: [10]`` the paper's one-hidden-layer MLP for UCI Adult; ``small-cnn``,
``badnet-mnist``... for images; scikit-learn estimators such as ``random-forest``; a model named
by import path) and how it is trained (:class:`~poisonlab.train.TrainConfig`; estimators ignore it).
Building and training go through :func:`poisonlab.models.build_model` and
:func:`poisonlab.models.learners.fit_learner` (torch networks: the same trainer, bit for bit).
Text is turned into TF-IDF features first (:class:`TextFeatures`) and then learnt like a
table. Three training modes (Sec. 5.3):

* ``scratch``: a fresh network trained on the (poisoned) training set;
* ``transfer``: the clean victim model's feature extractor is frozen and only its last
  layer is trained further on the (poisoned) training set;
* ``fine-tune``: every layer of the clean victim model is trained further.

In the last two modes the clean comparison model A(D) is trained the same way on D alone,
so that target damage measures the poison, not the extra training. They continue a torch
network; an estimator learns in ``scratch`` mode only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..data.base import Dataset
from ..errors import PoisonlabError
from ..models import MODELS, EstimatorModel, build_model
from ..models.layers import activations
from ..models.learners import fit_learner, require
from ..train import TrainConfig, predict_logits, seed_everything
from ..transfer import freeze_all_but_last_linear

Mode = Literal["scratch", "transfer", "fine-tune"]


class _DefaultOptions(dict):
    """The default ``options`` (the paper's MLP, ``hidden: [10]``): only meant for ``mlp``, so a
    spec naming another model without options builds it with its own defaults."""


@dataclass
class LearnerSpec:
    """``model:`` of a subpopulation experiment: network, options, training and mode."""

    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=lambda: _DefaultOptions(hidden=[10]))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=256, optimizer="adam",
                                                                    lr=0.001, schedule="constant"))
    mode: Mode = "scratch"
    retrain: TrainConfig | None = None
    representation: str | None = None

    def validate(self) -> None:
        if self.mode not in ("scratch", "transfer", "fine-tune"):
            raise PoisonlabError(f"model.mode must be scratch, transfer or fine-tune, got {self.mode!r}")
        from ..models import check_model_name

        check_model_name(self.name)  # registered, or an import path naming a model class
        self.train.validate()
        if self.retrain is not None:
            self.retrain.validate()
        if (self.mode != "scratch" and isinstance(self.name, str) and self.name in MODELS
                and MODELS.get(self.name).kind == "estimator"):
            raise PoisonlabError(f"model.mode {self.mode} continues training a torch network; model "
                                 f"'{self.name}' is a scikit-learn estimator; use mode: scratch")

    def model_options(self) -> dict[str, Any]:
        """The options ``build`` passes (the MLP default only for ``mlp``)."""
        if isinstance(self.options, _DefaultOptions) and self.name != "mlp":
            return {}
        return dict(self.options)


def build(spec: LearnerSpec, data: Dataset, seed: int) -> nn.Module:
    """A fresh learner for ``data``'s input shape and classes, initialised from ``seed``."""
    seed_everything(seed)
    return build_model(spec.name, tuple(data.x.shape[1:]), data.num_classes, spec.model_options())


def fit_scratch(spec: LearnerSpec, data: Dataset, seed: int) -> nn.Module:
    """Train a fresh learner on ``data`` (deterministic for a seed on CPU)."""
    model = build(spec, data, seed)
    fit_learner(model, data, spec.train, seed=seed, device="cpu", desc="subpop fit")
    return model.eval()


def fit_victim(spec: LearnerSpec, pretrained: nn.Module | None, data: Dataset, seed: int) -> nn.Module:
    """A(data) in the spec's mode: from scratch, or continued from ``pretrained`` (the clean model)."""
    if spec.mode == "scratch":
        return fit_scratch(spec, data, seed)
    if pretrained is None:
        raise PoisonlabError(f"model.mode {spec.mode} continues a clean model; none was given")
    require(pretrained, "torch", f"model.mode {spec.mode} (use mode: scratch)")
    model = copy.deepcopy(pretrained)
    if spec.mode == "transfer":
        freeze_all_but_last_linear(model)
    fit_learner(model, data, spec.retrain or spec.train, seed=seed, device="cpu", desc=f"subpop {spec.mode}")
    return model.eval()


def probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Softmax class probabilities of every row (N, C)."""
    return torch.softmax(predict_logits(model, x, batch_size).float(), 1).numpy()


def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Predicted class of every row."""
    return predict_logits(model, x, batch_size).argmax(1).numpy()


def last_hidden_layer(model: nn.Module) -> str | None:
    """Name of the module whose output feeds the last ``nn.Linear`` of a Sequential network
    (the paper's ClusterMatch representation); ``None`` when that layer reads the raw input
    (logistic regression, and every scikit-learn estimator: it reads the raw features)."""
    if isinstance(model, EstimatorModel):
        return None
    if not isinstance(model, nn.Sequential):
        raise PoisonlabError(f"{type(model).__name__} is not an nn.Sequential; name the representation layer")
    names = list(model._modules)
    linear = [i for i, n in enumerate(names) if isinstance(model._modules[n], nn.Linear)]
    if not linear:
        raise PoisonlabError(f"{type(model).__name__} has no nn.Linear layer")
    before = [n for n in names[:linear[-1]] if not isinstance(model._modules[n], (nn.Flatten, nn.Dropout))]
    return before[-1] if before else None


def representation(model: nn.Module, x: torch.Tensor, layer: str | None = "auto") -> np.ndarray:
    """Rows of ``x`` mapped through ``layer`` of ``model`` ("auto": the last hidden layer;
    ``None`` or "input": the raw features), flattened to (N, D) float64."""
    if layer == "auto":
        layer = last_hidden_layer(model)
    if layer in (None, "input"):
        return x.reshape(len(x), -1).double().numpy()
    out = activations(model, x, [layer])[layer]
    return out.reshape(len(out), -1).double().numpy()


@dataclass
class TextFeatures:
    """TF-IDF features of texts (Sec. 5.4, IMDB), fitted once on the victim's clean texts.

    The vocabulary and idf weights stay fixed for every retraining (a poison copies an
    attacker text, so refitting would change little and cost a pass over the corpus).
    """

    max_features: int = 2000
    ngram_max: int = 1
    min_df: int = 2
    vectorizer: Any = None

    def fit(self, texts: np.ndarray) -> TextFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if len(texts) == 0:
            raise PoisonlabError("no texts to fit TF-IDF features on")
        self.vectorizer = TfidfVectorizer(max_features=self.max_features, ngram_range=(1, self.ngram_max),
                                          min_df=min(self.min_df, len(texts)), sublinear_tf=True, dtype=np.float32)
        self.vectorizer.fit(list(texts))
        return self

    def transform(self, texts: np.ndarray) -> torch.Tensor:
        if self.vectorizer is None:
            raise PoisonlabError("TextFeatures.transform called before fit")
        return torch.from_numpy(self.vectorizer.transform(list(texts)).toarray().astype(np.float32))


def featurize(ds: Dataset, text: TextFeatures | None) -> Dataset:
    """``ds`` with tensor features: unchanged for tables and images, TF-IDF rows for text."""
    if "text" not in ds.meta or ds.x.shape[1:] != (0,):
        return ds
    if text is None:
        raise PoisonlabError("a text data set needs TF-IDF features; fit TextFeatures on the victim's texts first")
    return Dataset(text.transform(ds.meta["text"]), ds.y, list(ds.classes), dict(ds.meta))
