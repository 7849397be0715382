"""Backdoor triggers as pure, vectorised functions of an image batch.

A trigger takes a float NCHW batch in [0, 1] and returns a NEW batch with the trigger
stamped on every image (one tensor operation for the whole batch, no per-sample loop);
the input is never modified.

Kinds (build them from a config with :func:`build_trigger`, ``{"kind": ..., **params}``):

* ``single-pixel``, ``pattern``, ``patch``, ``image``: local triggers in the style of
  BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733): a bright pixel, a small
  pixel pattern, a solid (e.g. yellow) square, or an alpha-stamped sticker (bomb,
  flower, or any RGBA image file), placed at a corner, a pixel position or a relative
  centre.
* ``blend``: the blended-injection trigger of Chen, Liu, Li, Lu & Song 2017
  (arXiv 1712.05526): ``x' = (1 - alpha) * x + alpha * key`` over the whole image, where
  ``key`` is seeded random noise, a built-in icon or an image file.
* ``compose``: several triggers applied in order.

Design decisions (also stated in the parameter docs of each class):

* Placement of local triggers: exactly one of ``corner`` (with ``margin``),
  ``position`` or ``center``; with none given, ``corner="bottom-right"``. The default
  margin is 1 pixel, so the trigger stays off the outermost row/column, which
  crop/pad augmentation and zero padding clip or distort. ``position`` out of bounds is
  an error; ``center`` is relative, so the trigger is shifted (clamped) to stay inside
  the image for every image size.
* Colours: a number (all channels), one value per channel, or 3 RGB values; RGB on an
  image with other than 3 channels becomes its luminance (ITU-R BT.601 weights 0.299,
  0.587, 0.114, as Pillow's "L") on every channel. Icons and image files follow the
  same rule, so every trigger works for any channel count.
* ``pattern`` cells are intensities multiplying ``value``: 1 is the bright colour, 0 is
  black (it overwrites too, so the trigger looks the same on every image, as in BadNets'
  MNIST pattern), and ``None`` (YAML ``null``) leaves the pixel unchanged.
* Sizes: a whole number is pixels; a float in (0, 1] is relative to the image side
  (the shorter side for a square, or per axis for ``[height, width]``), rounded half up
  and at least 1 pixel.

>>> t = build_trigger({"kind": "patch", "color": [1, 1, 0], "size": 2})
>>> t.apply(torch.zeros(1, 3, 5, 5))[0, :, 3, 3].tolist()
[1.0, 1.0, 0.0]
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from . import icons
from .checks import SEED_MAX, is_whole
from .errors import PoisonlabError, did_you_mean
from .registry import Registry
from .triggers_checks import (  # noqa: F401  (re-exported: tests and callers import them from here)
    MAX_PIXELS,
    Color,
    Shape,
    Size,
    _as_list,
    _check_batch,
    _check_shape,
    _check_source,
    _color,
    _color_problem,
    _fail,
    _fmt,
    _fmt_size,
    _resolve_size,
    _round_half_up,
    _short,
    _size,
    _size_part,
    _unit,
)
from .triggers_local import (  # noqa: F401
    CORNERS,
    DEFAULT_CORNER,
    DEFAULT_MARGIN,
    DEFAULT_PATTERN,
    MAX_PATTERN,
    ImageTrigger,
    PatchTrigger,
    PatternTrigger,
    SinglePixelTrigger,
    _Local,
    _Placed,
)
from .triggers_pixels import (  # noqa: F401
    LUMA,
    _channel_values,
    _composite,
    _icon_premult,
    _load_file,
    _noise,
    _premult_resized,
    _read_rgba,
    _rgb_to_channels,
    stamp_rgba,
)

__all__ = [
    "CORNERS",
    "TRIGGERS",
    "BlendTrigger",
    "ComposeTrigger",
    "ImageTrigger",
    "PatchTrigger",
    "PatternTrigger",
    "SinglePixelTrigger",
    "Trigger",
    "build_trigger",
    "describe",
    "stamp_rgba",
]

MAX_COMPOSE = 16
"""A ``compose`` trigger holds at most this many triggers."""


@runtime_checkable
class Trigger(Protocol):
    """What every trigger offers (the training and evaluation code only uses these)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW batch in [0, 1] -> new triggered batch; ``x`` untouched."""
        ...

    def check_fits(self, shape: tuple[int, int, int]) -> None:
        """Raise :class:`PoisonlabError` if the trigger does not fit a (C, H, W) image."""
        ...

    def mask(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """(H, W) float in [0, 1]: how much each pixel is overwritten."""
        ...


TRIGGERS: Registry[type] = Registry("trigger")


def _register(name: str):
    """Register a trigger dataclass under ``name`` and remember the name on the class."""

    def decorator(cls: type) -> type:
        cls.kind = name
        return TRIGGERS.register(name)(cls)

    return decorator


for _local in (SinglePixelTrigger, PatternTrigger, PatchTrigger, ImageTrigger):
    _register(_local.kind)(_local)


# ----------------------------------------------------------------------------- whole-image kinds


@_register("blend")
@dataclass(frozen=True, kw_only=True)
class BlendTrigger:
    """Blended injection (Chen et al. 2017, arXiv 1712.05526): ``x' = (1-alpha)*x + alpha*key``.

    ``key``: ``"noise"`` (default; uniform noise per pixel and channel from ``seed``, fixed
    for a given image shape) or a built-in icon name; or ``path``: an image file. Icons
    and files are stretched to the whole image; where they are transparent the blend is
    weaker: ``x' = (1 - alpha*a)*x + alpha*a*rgb`` with the key's alpha ``a``.
    ``alpha``: blend ratio in (0, 1], default 0.2. ``seed``: int >= 0, default 0.
    """

    kind: ClassVar[str] = "blend"
    KEYS: ClassVar[tuple[str, ...]] = ("noise", *icons.ICONS)

    key: str = "noise"
    path: str | None = None
    alpha: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.key not in self.KEYS:
            hint = did_you_mean(self.key, self.KEYS) if isinstance(self.key, str) else ""
            _fail(self.kind, f"unknown key {_short(self.key)}{hint}; use one of {', '.join(self.KEYS)} "
                             f"or give `path` to an image file")
        key = None if self.key == "noise" else self.key
        object.__setattr__(self, "path", _check_source(self.kind, key, "key", self.path, need_one=False))
        object.__setattr__(self, "alpha", _unit(self.kind, "alpha", self.alpha, open_low=True))
        if not (is_whole(self.seed) and 0 <= int(self.seed) <= SEED_MAX):
            _fail(self.kind, f"`seed` must be a whole number in 0..{SEED_MAX}, got {_short(self.seed)}")
        object.__setattr__(self, "seed", int(self.seed))

    def check_fits(self, shape: tuple[int, int, int]) -> None:
        _check_shape(shape)
        if self.path is not None:
            _load_file(self.path)

    def _key(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Premultiplied key (C, H, W) and its alpha (H, W), or None when opaque (noise)."""
        c, h, w = shape
        if self.path is None and self.key == "noise":
            return _noise(self.seed, c, h, w), None
        if self.path is not None:
            premult, alpha = _premult_resized(_load_file(self.path), h, w)
        else:
            premult, alpha = _icon_premult(self.key, h, w)
        return _rgb_to_channels(premult, c), alpha

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        shape = _check_shape(tuple(x.shape[1:]))
        self.check_fits(shape)
        key, alpha = self._key(shape)
        key = key.to(x)
        if alpha is None:
            return (1 - self.alpha) * x + self.alpha * key
        return x * (1 - self.alpha * alpha.to(x)) + self.alpha * key

    def mask(self, shape: tuple[int, int, int]) -> torch.Tensor:
        shape = _check_shape(shape)
        self.check_fits(shape)
        _, alpha = self._key(shape)
        return torch.full(shape[1:], self.alpha) if alpha is None else self.alpha * alpha

    def describe(self) -> str:
        if self.path is not None:
            source = f"file '{self.path}'"
        elif self.key == "noise":
            source = f"random noise (seed {self.seed})"
        else:
            source = f"icon '{self.key}'"
        return f"blend trigger: {source} blended over the whole image with alpha {_fmt(self.alpha)}"


def _leaves(trigger: Any) -> int:
    """How many plain triggers a (possibly nested) compose trigger stamps."""
    return sum(_leaves(t) for t in trigger.triggers) if isinstance(trigger, ComposeTrigger) else 1


@_register("compose")
@dataclass(frozen=True, kw_only=True)
class ComposeTrigger:
    """Several triggers applied in order (later ones are stamped over earlier ones).

    ``triggers``: a non-empty list of trigger configs (``{"kind": ..., ...}``) or trigger
    objects. The mask is ``1 - prod(1 - mask_i)``.
    """

    kind: ClassVar[str] = "compose"

    triggers: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        items = _as_list(self.triggers)
        if not isinstance(items, (list, tuple)) or not items or len(items) > MAX_COMPOSE:
            _fail(self.kind, f"`triggers` must be a non-empty list of at most {MAX_COMPOSE} trigger configs, "
                             "e.g. [{kind: patch}, {kind: blend}]")
        built = []
        for i, item in enumerate(items, start=1):
            if isinstance(item, Mapping):
                try:
                    item = build_trigger(item)
                except PoisonlabError as e:
                    raise PoisonlabError(f"compose trigger, item {i}: {e}") from None
            elif not isinstance(item, Trigger):
                _fail(self.kind, f"item {i} of `triggers` must be a trigger config like "
                                 f"{{kind: patch}}, got {_short(item)}")
            built.append(item)
        leaves = sum(_leaves(t) for t in built)
        if leaves > MAX_COMPOSE:
            _fail(self.kind, f"holds {leaves} triggers (nested ones included); at most {MAX_COMPOSE}")
        object.__setattr__(self, "triggers", tuple(built))

    def check_fits(self, shape: tuple[int, int, int]) -> None:
        for t in self.triggers:
            t.check_fits(shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        self.check_fits(tuple(x.shape[1:]))
        for t in self.triggers:
            x = t.apply(x)
        return x

    def mask(self, shape: tuple[int, int, int]) -> torch.Tensor:
        kept = torch.ones(_check_shape(shape)[1:])
        for t in self.triggers:
            kept = kept * (1 - t.mask(shape))
        return 1 - kept

    def describe(self) -> str:
        return "compose trigger: " + "; then ".join(describe(t) for t in self.triggers)


# ----------------------------------------------------------------------------- building


def _param_names(cls: type) -> list[str]:
    """Parameter names of a trigger class: its own first, placement last."""
    names = [f.name for f in fields(cls)]
    return [n for n in names if n not in _Placed._PLACEMENT] + [n for n in names if n in _Placed._PLACEMENT]


def build_trigger(cfg: Mapping[str, Any]) -> Trigger:
    """A trigger from a config ``{"kind": name, **params}``; one-line errors for bad input.

    >>> describe(build_trigger({"kind": "single-pixel"}))
    'single-pixel trigger: value 1 at the bottom-right corner (margin 1 px)'
    """
    if not isinstance(cfg, Mapping):
        raise PoisonlabError(f"a trigger config must be a mapping like {{kind: patch, size: 3}}, got {_short(cfg)}")
    if "kind" not in cfg:
        raise PoisonlabError(f"the trigger config has no `kind`; set it to one of {', '.join(TRIGGERS.names())}")
    kind = cfg["kind"]
    if not isinstance(kind, str):
        raise PoisonlabError(f"trigger `kind` must be a name, one of {', '.join(TRIGGERS.names())}; got {_short(kind)}")
    cls = TRIGGERS.get(kind)
    params = {k: v for k, v in cfg.items() if k != "kind"}
    allowed = _param_names(cls)
    for key in params:
        if key not in allowed:
            hint = did_you_mean(key, allowed) if isinstance(key, str) else ""
            _fail(kind, f"unknown parameter {_short(key)}{hint}; allowed: kind, {', '.join(allowed)}")
    return cls(**params)


def describe(trigger: Trigger) -> str:
    """A one-line human description of a trigger."""
    text = trigger.describe() if hasattr(trigger, "describe") else repr(trigger)
    return " ".join(text.split())
