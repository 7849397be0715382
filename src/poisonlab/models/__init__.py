"""Models: a registry of learners (networks and scikit-learn estimators, issue 11 item 3),
models named by import path (:mod:`.imports`) and by-name layer access."""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import PoisonlabError
from ..registry import Registry
from .estimators import EstimatorModel, estimator_builder
from .imports import (
    build_imported,
    is_import_path,
    resolve_class,
    set_trust_code,
    trusting_code,
)
from .layers import activations, conv_layers, first_conv, get_layer, layer_names
from .nets import MLP, BadNetMNIST, DigitsCNN, ResNet18, SmallCNN


@dataclass(frozen=True)
class ModelSpec:
    """A registered learner: its builder, the input sizes it supports, its kind (torch|estimator)."""

    name: str
    description: str
    build: Callable[[tuple[int, ...], int, dict], nn.Module]
    min_side: int = 1
    kind: str = "torch"


MODELS: Registry[ModelSpec] = Registry("model")


def _image_shape(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(shape) != 3 or shape[1] != shape[2]:
        raise PoisonlabError(f"model '{name}' needs square images (C,H,W); the data has shape {tuple(shape)}; pick model 'mlp'")
    return shape[0], shape[1]


def _conv_builder(cls: type[nn.Module], name: str, min_side: int) -> Callable[[tuple[int, ...], int, dict], nn.Module]:
    def build(shape: tuple[int, ...], num_classes: int, options: dict) -> nn.Module:
        if options:
            raise PoisonlabError(f"model '{name}' takes no options; remove model.options {sorted(options)}")
        channels, side = _image_shape(shape, name)
        if side < min_side:
            raise PoisonlabError(f"model '{name}' needs images of at least {min_side}x{min_side}; the data is {side}x{side}")
        return cls(in_channels=channels, num_classes=num_classes, image_size=side)

    return build


def _build_small_cnn(shape: tuple[int, ...], num_classes: int, options: dict) -> nn.Module:
    unknown = set(options) - {"convs_per_block", "width"}
    if unknown:
        raise PoisonlabError(f"model 'small-cnn' has no option(s) {sorted(unknown)}; allowed: convs_per_block (1 or 2), width")
    convs = options.get("convs_per_block", 2)
    width = options.get("width", 32)
    if convs not in (1, 2) or isinstance(convs, bool):
        raise PoisonlabError(f"model.options.convs_per_block must be 1 or 2, got {convs!r}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise PoisonlabError(f"model.options.width must be a positive integer, got {width!r}")
    channels, side = _image_shape(shape, "small-cnn")
    if side < 8:
        raise PoisonlabError(f"model 'small-cnn' needs images of at least 8x8; the data is {side}x{side}")
    return SmallCNN(channels, num_classes, side, convs_per_block=convs, width=width)


def _build_mlp(shape: tuple[int, ...], num_classes: int, options: dict) -> nn.Module:
    unknown = set(options) - {"hidden"}
    if unknown:
        raise PoisonlabError(f"model 'mlp' has no option(s) {sorted(unknown)}; allowed: hidden (list of widths)")
    hidden = options.get("hidden", [256])
    if isinstance(hidden, int):
        hidden = [hidden]
    if not isinstance(hidden, (list, tuple)) or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                                    for h in hidden):
        raise PoisonlabError(f"model.options.hidden must be a list of positive integers ([] = logistic "
                             f"regression), got {hidden!r}")
    return MLP(math.prod(shape), num_classes, tuple(hidden))


for _spec in (
    ModelSpec("badnet-mnist", "BadNets MNIST net: conv16@5x5-avgpool-conv32@5x5-avgpool-fc512-fc (Gu et al. 2017)",
              _conv_builder(BadNetMNIST, "badnet-mnist", 16), 16),
    ModelSpec("digits-cnn", "small CNN for 8x8 images: conv32@3x3-conv64@3x3-maxpool-fc128-fc",
              _conv_builder(DigitsCNN, "digits-cnn", 2), 2),
    ModelSpec("small-cnn", "VGG-style CNN for 32x32 colour images: 3 blocks of 2 convs (32-64-128) with BN, fc256 "
              "(options: convs_per_block: 1|2, width: 32)", _build_small_cnn, 8),
    ModelSpec("resnet18", "ResNet-18 for 32x32 inputs (3x3 stem, no max-pool)", _conv_builder(ResNet18, "resnet18", 8), 8),
    ModelSpec("mlp", "multilayer perceptron on flattened input (options: hidden: [256]; [] = logistic regression)", _build_mlp),
):
    MODELS.register(_spec.name)(_spec)

_SK = "sklearn."
LIGHTGBM_MISSING = ("model 'lightgbm' needs the lightgbm package, which is not installed; "
                    "pip install lightgbm (or pip install 'poisonlab[lightgbm]')")
for _spec in (
    ModelSpec("logistic-regression", "scikit-learn LogisticRegression (max_iter 1000; options: its parameters)",
              estimator_builder(_SK + "linear_model:LogisticRegression", "logistic-regression", max_iter=1000), kind="estimator"),
    ModelSpec("linear-svm", "scikit-learn LinearSVC (options: its parameters)",
              estimator_builder(_SK + "svm:LinearSVC", "linear-svm"), kind="estimator"),
    ModelSpec("kernel-svm", "scikit-learn SVC, RBF kernel, no probability calibration (decision values; options: its parameters)",
              estimator_builder(_SK + "svm:SVC", "kernel-svm", kernel="rbf"), kind="estimator"),
    ModelSpec("random-forest", "scikit-learn RandomForestClassifier (n_estimators 100; options: its parameters)",
              estimator_builder(_SK + "ensemble:RandomForestClassifier", "random-forest", n_estimators=100), kind="estimator"),
    ModelSpec("gradient-boosting", "scikit-learn HistGradientBoostingClassifier (options: its parameters)",
              estimator_builder(_SK + "ensemble:HistGradientBoostingClassifier", "gradient-boosting"), kind="estimator"),
    ModelSpec("ols", "scikit-learn LinearRegression, ordinary least squares (regression; options: its parameters)",
              estimator_builder(_SK + "linear_model:LinearRegression", "ols"), kind="estimator"),
    ModelSpec("ridge-regression", "scikit-learn Ridge (regression; options: alpha 1.0, its parameters)",
              estimator_builder(_SK + "linear_model:Ridge", "ridge-regression"), kind="estimator"),
    ModelSpec("lasso", "scikit-learn Lasso (regression; options: alpha 1.0, its parameters)",
              estimator_builder(_SK + "linear_model:Lasso", "lasso"), kind="estimator"),
    ModelSpec("elastic-net", "scikit-learn ElasticNet (regression; options: alpha 1.0, l1_ratio 0.5, its parameters)",
              estimator_builder(_SK + "linear_model:ElasticNet", "elastic-net"), kind="estimator"),
    *([ModelSpec("lightgbm", "LightGBM LGBMClassifier (verbose -1; options: its parameters)",
                 estimator_builder("lightgbm:LGBMClassifier", "lightgbm", verbose=-1), kind="estimator")]
      if importlib.util.find_spec("lightgbm") is not None else []),
):
    MODELS.register(_spec.name)(_spec)


def model_kind(name: str) -> str | None:
    """``torch`` or ``estimator`` for a registered model; ``None`` for an import path (its kind is
    known once imported). Unknown names are the registry's one-line error."""
    if is_import_path(name):
        return None
    if name == "lightgbm" and name not in MODELS:
        raise PoisonlabError(LIGHTGBM_MISSING)
    return MODELS.get(name).kind


def check_model_name(name: str) -> None:
    """Check a ``model.name`` without building it: registered, or an import path that resolves to a
    model class (which imports the module; a file only with trust-code on)."""
    if model_kind(name) is None:
        resolve_class(name)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict | None = None) -> nn.Module:
    """Build a registered model, or one named by import path (``pkg.mod:Class``, ``file.py:Class``:
    :mod:`.imports`), for inputs of ``input_shape`` (without the batch dim).

    >>> build_model("badnet-mnist", (1, 28, 28), 10).fc2.out_features
    10
    """
    if is_import_path(name):
        return build_imported(name, tuple(input_shape), num_classes, dict(options or {}))
    model_kind(name)
    return MODELS.get(name).build(tuple(input_shape), num_classes, dict(options or {}))


__all__ = [
    "MLP",
    "MODELS",
    "BadNetMNIST",
    "DigitsCNN",
    "EstimatorModel",
    "ModelSpec",
    "ResNet18",
    "SmallCNN",
    "activations",
    "build_model",
    "check_model_name",
    "conv_layers",
    "first_conv",
    "get_layer",
    "layer_names",
    "model_kind",
    "set_trust_code",
    "trusting_code",
]
