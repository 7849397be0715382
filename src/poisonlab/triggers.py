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

import math
import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, NoReturn, Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F

from . import icons
from .checks import SEED_MAX, is_number, is_whole
from .errors import PoisonlabError, did_you_mean, shown
from .registry import Registry

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

CORNERS: tuple[str, ...] = ("bottom-right", "bottom-left", "top-right", "top-left")
DEFAULT_CORNER = "bottom-right"
DEFAULT_MARGIN = 1
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luminance weights (Pillow's RGB -> "L")."""
MAX_PIXELS = 4096
"""Trigger sizes, margins and positions are at most this many pixels (the image is checked later)."""
MAX_PATTERN = 256
"""A ``pattern`` has at most this many rows and columns."""
MAX_COMPOSE = 16
"""A ``compose`` trigger holds at most this many triggers."""
DEFAULT_PATTERN: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0))

Shape = tuple[int, int, int]
Color = Union[float, tuple[float, ...]]
Size = Union[int, float, tuple[Union[int, float], Union[int, float]]]


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


# ----------------------------------------------------------------------------- validation


def _fail(kind: str, message: str) -> NoReturn:
    raise PoisonlabError(f"{kind} trigger: {message}")


def _short(value: Any, limit: int = 60) -> str:
    return shown(value, limit)


def _as_list(v: Any) -> Any:
    """numpy arrays and tensors -> nested lists; anything else unchanged."""
    return v.tolist() if hasattr(v, "tolist") and not isinstance(v, (str, bytes)) else v


def _unit(kind: str, name: str, v: Any, *, open_low: bool = False) -> float:
    """A number in [0, 1] (or (0, 1] with ``open_low``)."""
    if not is_number(v) or not (0 < float(v) <= 1 if open_low else 0 <= float(v) <= 1):
        _fail(kind, f"`{name}` must be a number in {'(0, 1]' if open_low else '[0, 1]'}, got {_short(v)}")
    return float(v)


def _color(kind: str, name: str, v: Any) -> Color:
    """A number in [0, 1] or a non-empty list of them (per channel, or RGB)."""
    v = _as_list(v)
    if is_number(v):
        return _unit(kind, name, v)
    if isinstance(v, (list, tuple)) and v and len(v) <= MAX_PIXELS and all(is_number(c) for c in v):
        return tuple(_unit(kind, name, c) for c in v)
    _fail(kind, f"`{name}` must be a number in [0, 1] or a list of per-channel numbers in [0, 1] "
                f"(e.g. [1, 1, 0] for yellow), got {_short(v)}")


def _size_part(v: Any) -> bool:
    return (is_whole(v) and 1 <= int(v) <= MAX_PIXELS) or (is_number(v) and not is_whole(v) and 0 < float(v) <= 1)


def _size(kind: str, v: Any) -> Size:
    """Pixels (int >= 1), a fraction of the side (float in (0, 1]), or [height, width] of those."""
    v = _as_list(v)
    if _size_part(v):
        return int(v) if is_whole(v) else float(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_size_part(p) for p in v):
        return tuple(int(p) if is_whole(p) else float(p) for p in v)  # type: ignore[return-value]
    _fail(kind, f"`size` must be whole pixels in 1..{MAX_PIXELS} (e.g. 3), a fraction of the image side in (0, 1] "
                f"(e.g. 0.1), or [height, width] of those; got {_short(v)}")


def _check_shape(shape: Any) -> Shape:
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3
            and all(is_whole(s) and int(s) >= 1 for s in shape)):
        raise PoisonlabError(f"trigger image shape must be (channels, height, width) of positive whole "
                             f"numbers, got {_short(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_batch(x: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PoisonlabError(f"triggers take a float NCHW batch, got {got}; "
                             f"add a batch dimension with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise PoisonlabError(f"triggers take float images in [0, 1], got dtype {x.dtype}; "
                             f"convert with x.float() / 255")


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _resolve_size(size: Size, height: int, width: int, aspect: float | None = None) -> tuple[int, int]:
    """(h, w) in pixels; a scalar size keeps ``aspect`` (h / w) with its longer side = size."""
    def pixels(s: int | float, side: int) -> int:
        return int(s) if isinstance(s, int) else max(1, _round_half_up(s * side))

    if isinstance(size, tuple):
        return pixels(size[0], height), pixels(size[1], width)
    side = pixels(size, min(height, width))
    if aspect is None or aspect == 1:
        return side, side
    if aspect > 1:
        return side, max(1, _round_half_up(side / aspect))
    return max(1, _round_half_up(side * aspect)), side


def _fmt_size(size: Size) -> str:
    def one(s: int | float) -> str:
        return f"{s} px" if isinstance(s, int) else f"{s:g} of the image side"

    return one(size) if not isinstance(size, tuple) else f"{one(size[0])} x {one(size[1])}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(p) for p in v) + "]"
    return str(v)


# ----------------------------------------------------------------------------- pixels


def _rgb_to_channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """(3, ...) RGB -> (channels, ...): unchanged for 3 channels, else luminance on every channel."""
    if channels == 3:
        return rgb
    luma = LUMA[0] * rgb[0] + LUMA[1] * rgb[1] + LUMA[2] * rgb[2]
    return luma.unsqueeze(0).expand(channels, *luma.shape).clone()


def _color_problem(color: Color, channels: int) -> str | None:
    n = 1 if isinstance(color, float) else len(color)
    if n in (1, 3, channels):
        return None
    return (f"has {n} values but the image has {channels} channels; give one number, "
            f"{channels} per-channel values, or 3 RGB values")


def _channel_values(color: Color, channels: int) -> torch.Tensor:
    """(channels,) float32 colour for an image with ``channels`` channels (see module doc)."""
    values = torch.tensor([color] if isinstance(color, float) else list(color), dtype=torch.float32)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values.expand(channels).clone()
    return _rgb_to_channels(values, channels)


def _composite(x: torch.Tensor, premult: torch.Tensor, alpha: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """New batch with (C, h, w) premultiplied colour over-composited at (top, left) with (h, w) alpha."""
    h, w = alpha.shape
    out = x.clone()
    region = x[:, :, top:top + h, left:left + w]
    out[:, :, top:top + h, left:left + w] = region * (1 - alpha.to(x)) + premult.to(x)
    return out


def stamp_rgba(x: torch.Tensor, rgba: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Alpha-stamp a straight-alpha (C+1, h, w) image onto every image of ``x`` at (top, left).

    Pixel-wise ``x' = (1 - a) * x + a * rgb``: a = 0 leaves the pixel, a = 1 replaces it.
    The caller matches channels and bounds; :class:`ImageTrigger` does both.
    """
    _check_batch(x)
    premult = rgba[:-1] * rgba[-1]
    return _composite(x, premult, rgba[-1], top, left)


@lru_cache(maxsize=16)
def _read_rgba(path: str, mtime_ns: int) -> torch.Tensor:
    """(4, H, W) float32 straight-alpha image from a file (cached per path and mtime).

    The file must be a regular file (no link, FIFO or device) under ``$POISONLAB_MAX_FILE_MB``,
    in one of :data:`poisonlab.data.images.TRIGGER_FORMATS`, its declared size at most
    :data:`~poisonlab.data.images.TRIGGER_MAX_PIXELS`, checked before any pixel is decoded
    (a decompression bomb is a one-line error).
    """
    from .data.images import TRIGGER_FORMATS, TRIGGER_MAX_PIXELS, decode
    from .data.safe_files import read_regular_file

    data = read_regular_file(path, None, label=f"trigger image '{path}'")
    arr = decode(data, f"'{path}'", mode="RGBA", max_pixels=TRIGGER_MAX_PIXELS, formats=TRIGGER_FORMATS,
                 what="cannot read trigger image", fix="give a small PNG (with alpha) or JPEG file")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _load_file(path: str) -> torch.Tensor:
    try:
        mtime = os.lstat(path).st_mtime_ns  # a link is refused by the read, not followed
    except OSError:
        raise PoisonlabError(f"trigger image '{path}' not found; give the path of an existing PNG file") from None
    return _read_rgba(path, mtime)


def _premult_resized(rgba: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied RGB (3, h, w) and alpha (h, w) of a straight RGBA image resized to (h, w)."""
    premult = torch.cat([rgba[:3] * rgba[3], rgba[3:]])
    if premult.shape[1:] != (h, w):
        premult = F.interpolate(premult[None], size=(h, w), mode="bilinear", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
        premult[:3] = torch.minimum(premult[:3], premult[3:])
    return premult[:3], premult[3]


def _icon_premult(name: str, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A built-in icon rendered at max(h, w) (exact size when square) and resized to (h, w)."""
    return _premult_resized(icons.render_icon(name, max(h, w)), h, w)


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True, kw_only=True)
class _Placed:
    """Placement of a local trigger: one of ``corner`` (+ ``margin``), ``position``, ``center``.

    * ``corner``: one of :data:`CORNERS`; the default when nothing is given is
      ``"bottom-right"`` (BadNets' placement).
    * ``margin``: pixels between the trigger and the two nearest borders, only with a
      corner; default 1 (keeps the trigger off the border row/column).
    * ``position``: ``[row, col]`` of the trigger's top-left pixel; must fit the image.
    * ``center``: ``[rel_row, rel_col]`` in [0, 1], the trigger's centre as a fraction of
      the image height/width (e.g. ``[0.57, 0.82]``); the trigger is shifted to stay inside.
    """

    kind: ClassVar[str] = "?"
    _PLACEMENT: ClassVar[tuple[str, ...]] = ("corner", "margin", "position", "center")

    corner: str | None = None
    margin: int | None = None
    position: tuple[int, int] | None = None
    center: tuple[float, float] | None = None

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        given = [n for n in ("corner", "position", "center") if getattr(self, n) is not None]
        if len(given) > 1:
            _fail(self.kind, f"give only one of `corner`, `position`, `center`, got {', '.join(given)}")
        if self.margin is not None and (self.position is not None or self.center is not None):
            _fail(self.kind, "`margin` only applies with `corner`; drop it or use `corner` instead")
        if self.corner is not None and self.corner not in CORNERS:
            _fail(self.kind, f"unknown corner {_short(self.corner)}"
                             f"{did_you_mean(self.corner, CORNERS) if isinstance(self.corner, str) else ''}; "
                             f"use one of {', '.join(CORNERS)}")
        if self.margin is not None and not (is_whole(self.margin) and 0 <= int(self.margin) <= MAX_PIXELS):
            _fail(self.kind, f"`margin` must be a whole number of pixels in 0..{MAX_PIXELS}, got {_short(self.margin)}")
        self._check_position()
        self._check_center()

    def _check_position(self) -> None:
        if self.position is None:
            return
        p = _as_list(self.position)
        if not (isinstance(p, (list, tuple)) and len(p) == 2
                and all(is_whole(v) and 0 <= int(v) <= MAX_PIXELS for v in p)):
            _fail(self.kind, f"`position` must be [row, col] of whole numbers in 0..{MAX_PIXELS} (the trigger's "
                             f"top-left pixel), got {_short(self.position)}")
        self._set("position", (int(p[0]), int(p[1])))

    def _check_center(self) -> None:
        if self.center is None:
            return
        c = _as_list(self.center)
        if not (isinstance(c, (list, tuple)) and len(c) == 2 and all(is_number(v) and 0 <= v <= 1 for v in c)):
            _fail(self.kind, f"`center` must be [rel_row, rel_col] with numbers in [0, 1] (fractions of "
                             f"the image height and width), got {_short(self.center)}")
        self._set("center", (float(c[0]), float(c[1])))

    @property
    def effective_corner(self) -> str:
        return self.corner or DEFAULT_CORNER

    @property
    def effective_margin(self) -> int:
        return DEFAULT_MARGIN if self.margin is None else int(self.margin)

    def _check_place(self, height: int, width: int, h: int, w: int) -> None:
        """Raise if an (h, w) trigger cannot be placed on a (height, width) image."""
        if h > height or w > width:
            _fail(self.kind, f"the trigger is {h}x{w} pixels but the image is only {height}x{width}; "
                             f"use a smaller trigger (`size` or `pattern`) or larger images")
        if self.position is not None:
            r, c = self.position
            if r + h > height or c + w > width:
                _fail(self.kind, f"a {h}x{w} trigger at position [{r}, {c}] runs past the {height}x{width} "
                                 f"image (to row {r + h - 1}, col {c + w - 1}); use row <= {height - h} "
                                 f"and col <= {width - w}")
        elif self.center is None:
            m = self.effective_margin
            if h + m > height or w + m > width:
                _fail(self.kind, f"a {h}x{w} trigger with margin {m} needs an image of at least "
                                 f"{h + m}x{w + m} pixels, got {height}x{width}; lower `margin` or "
                                 f"use a smaller trigger")

    def _origin(self, height: int, width: int, h: int, w: int) -> tuple[int, int]:
        """(top, left) of the trigger; assumes :meth:`_check_place` passed."""
        if self.position is not None:
            return self.position
        if self.center is not None:
            top = _round_half_up(self.center[0] * height - h / 2)
            left = _round_half_up(self.center[1] * width - w / 2)
            return min(max(top, 0), height - h), min(max(left, 0), width - w)
        m, corner = self.effective_margin, self.effective_corner
        top = m if corner.startswith("top") else height - m - h
        left = m if corner.endswith("left") else width - m - w
        return top, left

    def _where(self) -> str:
        if self.position is not None:
            return f"with its top-left pixel at row {self.position[0]}, col {self.position[1]}"
        if self.center is not None:
            return f"centred at ({_fmt(self.center[0])}, {_fmt(self.center[1])}) of the image height/width"
        return f"at the {self.effective_corner} corner (margin {self.effective_margin} px)"


@dataclass(frozen=True, kw_only=True)
class _Local(_Placed):
    """A trigger stamped on a rectangle: subclasses give its size and premultiplied pixels."""

    def _extent(self, shape: Shape) -> tuple[int, int]:
        raise NotImplementedError

    def _pixels(self, shape: Shape, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Premultiplied colour (C, h, w) and alpha (h, w), float32."""
        raise NotImplementedError

    def _check_channels(self, channels: int) -> None:
        """Subclasses with colours raise here when the colour does not match the channels."""

    def check_fits(self, shape: tuple[int, int, int]) -> None:
        c, height, width = _check_shape(shape)
        self._check_channels(c)
        h, w = self._extent((c, height, width))
        self._check_place(height, width, h, w)

    def _placed(self, shape: Shape) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        self.check_fits(shape)
        c, height, width = _check_shape(shape)
        h, w = self._extent((c, height, width))
        premult, alpha = self._pixels((c, height, width), h, w)
        top, left = self._origin(height, width, h, w)
        return top, left, premult, alpha

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        top, left, premult, alpha = self._placed(tuple(x.shape[1:]))
        return _composite(x, premult, alpha, top, left)

    def mask(self, shape: tuple[int, int, int]) -> torch.Tensor:
        top, left, _, alpha = self._placed(shape)
        out = torch.zeros(shape[1], shape[2])
        out[top:top + alpha.shape[0], left:left + alpha.shape[1]] = alpha
        return out


# ----------------------------------------------------------------------------- kinds


@_register("single-pixel")
@dataclass(frozen=True, kw_only=True)
class SinglePixelTrigger(_Local):
    """One pixel set to ``value`` (BadNets' single-pixel backdoor, arXiv 1708.06733).

    ``value``: number in [0, 1] or per-channel/RGB list, default 1.0 (white).
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    value: Color = 1.0

    def __post_init__(self) -> None:
        self._set("value", _color(self.kind, "value", self.value))
        super().__post_init__()

    def _check_channels(self, channels: int) -> None:
        if (problem := _color_problem(self.value, channels)) is not None:
            _fail(self.kind, f"`value` {problem}")

    def _extent(self, shape: Shape) -> tuple[int, int]:
        return 1, 1

    def _pixels(self, shape: Shape, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _channel_values(self.value, shape[0]).view(-1, 1, 1), torch.ones(1, 1)

    def describe(self) -> str:
        return f"single-pixel trigger: value {_fmt(self.value)} {self._where()}"


@_register("pattern")
@dataclass(frozen=True, kw_only=True)
class PatternTrigger(_Local):
    """A small fixed pixel pattern (BadNets' pattern backdoor, arXiv 1708.06733).

    ``pattern``: 2-D list of cells, default 3x3 ``[[1,0,1],[0,1,0],[1,0,1]]``; a cell c in
    [0, 1] sets the pixel to ``c * value`` (1 = bright, 0 = black: the whole pattern
    overwrites), and ``None``/``null`` leaves the pixel unchanged.
    ``value``: the bright colour, number or per-channel/RGB list, default 1.0.
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    pattern: tuple[tuple[float | None, ...], ...] = DEFAULT_PATTERN
    value: Color = 1.0

    def __post_init__(self) -> None:
        self._set("pattern", self._valid_pattern(_as_list(self.pattern)))
        self._set("value", _color(self.kind, "value", self.value))
        super().__post_init__()

    def _valid_pattern(self, p: Any) -> tuple[tuple[float | None, ...], ...]:
        ok = (isinstance(p, (list, tuple)) and p and len(p) <= MAX_PATTERN
              and all(isinstance(r, (list, tuple)) and r and len(r) <= MAX_PATTERN for r in p)
              and len({len(r) for r in p}) == 1
              and all(c is None or (is_number(c) and 0 <= c <= 1) for r in p for c in r)
              and any(c is not None for r in p for c in r))
        if not ok:
            _fail(self.kind, f"`pattern` must be a rectangular 2-D list (at most {MAX_PATTERN}x{MAX_PATTERN}) of "
                             f"numbers in [0, 1] (null = leave the pixel unchanged, at least one number), "
                             f"e.g. [[1, 0, 1], [0, 1, 0], "
                             f"[1, 0, 1]]; got {_short(p)}")
        return tuple(tuple(None if c is None else float(c) for c in r) for r in p)

    def _check_channels(self, channels: int) -> None:
        if (problem := _color_problem(self.value, channels)) is not None:
            _fail(self.kind, f"`value` {problem}")

    def _extent(self, shape: Shape) -> tuple[int, int]:
        return len(self.pattern), len(self.pattern[0])

    def _pixels(self, shape: Shape, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        cells = torch.tensor([[0.0 if c is None else c for c in r] for r in self.pattern])
        alpha = torch.tensor([[0.0 if c is None else 1.0 for c in r] for r in self.pattern])
        colour = _channel_values(self.value, shape[0]).view(-1, 1, 1)
        return cells * colour * alpha, alpha

    def describe(self) -> str:
        h, w = self._extent((1, 1, 1))
        return f"pattern trigger: {h}x{w} pattern of value {_fmt(self.value)} {self._where()}"


@_register("patch")
@dataclass(frozen=True, kw_only=True)
class PatchTrigger(_Local):
    """A solid rectangle of one colour (BadNets' yellow square, arXiv 1708.06733).

    ``color``: number or per-channel/RGB list in [0, 1], default 1.0 (white); e.g.
    ``[1, 1, 0]`` is yellow (grey images get its luminance).
    ``size``: pixels (int), a fraction of the shorter image side (float in (0, 1]),
    or ``[height, width]`` of those (fractions per axis); default 0.1.
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    color: Color = 1.0
    size: Size = 0.1

    def __post_init__(self) -> None:
        self._set("color", _color(self.kind, "color", self.color))
        self._set("size", _size(self.kind, self.size))
        super().__post_init__()

    def _check_channels(self, channels: int) -> None:
        if (problem := _color_problem(self.color, channels)) is not None:
            _fail(self.kind, f"`color` {problem}")

    def _extent(self, shape: Shape) -> tuple[int, int]:
        return _resolve_size(self.size, shape[1], shape[2])

    def _pixels(self, shape: Shape, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        colour = _channel_values(self.color, shape[0]).view(-1, 1, 1)
        return colour.expand(-1, h, w).clone(), torch.ones(h, w)

    def describe(self) -> str:
        return f"patch trigger: color {_fmt(self.color)}, size {_fmt_size(self.size)} {self._where()}"


def _check_source(kind: str, icon: Any, icon_name: str, path: Any, *, need_one: bool) -> str | None:
    """Validate an icon name and/or a file path; return the path as a string (or None)."""
    if icon is not None and path is not None:
        _fail(kind, f"give either `{icon_name}` or `path`, not both")
    if need_one and icon is None and path is None:
        _fail(kind, f"give `icon` (one of {', '.join(icons.ICONS)}) or `path` (an RGBA PNG file)")
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not str(path) or len(str(path)) > 4096:
        _fail(kind, f"`path` must be a file path string (at most 4096 characters), got {_short(path)}")
    try:
        found = Path(path).is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        _fail(kind, f"image file {_short(str(path), 200)} not found; give the path of an existing PNG file")
    return str(path)


@_register("image")
@dataclass(frozen=True, kw_only=True)
class ImageTrigger(_Local):
    """An RGBA image stamped with its alpha (BadNets' bomb/flower stickers, arXiv 1708.06733).

    ``icon``: a built-in icon (``bomb``, ``flower``, ``square``; see :mod:`poisonlab.icons`),
    or ``path``: an image file read with Pillow (PNG alpha is used; no alpha = opaque).
    Exactly one of them. ``size``: as for ``patch``, default 0.16 (BadNets' stickers); a single size is the
    longer side of a file image (its aspect ratio is kept). Resizing is antialiased on
    premultiplied colour; an image already at the target size is used exactly.
    Grey (or other non-RGB) images get the luminance. Placement: see :class:`_Placed`.
    """

    icon: str | None = None
    path: str | None = None
    size: Size = 0.16

    def __post_init__(self) -> None:
        if self.icon is not None and self.icon not in icons.ICONS:
            hint = did_you_mean(self.icon, icons.ICONS) if isinstance(self.icon, str) else ""
            _fail(self.kind, f"unknown icon {_short(self.icon)}{hint}; use one of {', '.join(icons.ICONS)} "
                             f"or give `path` to an image file")
        self._set("path", _check_source(self.kind, self.icon, "icon", self.path, need_one=True))
        self._set("size", _size(self.kind, self.size))
        super().__post_init__()

    def _extent(self, shape: Shape) -> tuple[int, int]:
        aspect = None
        if self.path is not None:
            rgba = _load_file(self.path)
            aspect = rgba.shape[1] / rgba.shape[2]
        return _resolve_size(self.size, shape[1], shape[2], aspect)

    def _pixels(self, shape: Shape, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.path is not None:
            premult, alpha = _premult_resized(_load_file(self.path), h, w)
        else:
            premult, alpha = _icon_premult(self.icon, h, w)  # type: ignore[arg-type]
        return _rgb_to_channels(premult, shape[0]), alpha

    def describe(self) -> str:
        source = f"icon '{self.icon}'" if self.icon is not None else f"file '{self.path}'"
        return f"image trigger: {source}, size {_fmt_size(self.size)}, alpha-stamped {self._where()}"


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


@lru_cache(maxsize=32)
def _noise(seed: int, c: int, h: int, w: int) -> torch.Tensor:
    """Uniform [0, 1) noise (c, h, w) from ``seed``; the same for the same seed and shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((c, h, w), generator=gen, dtype=torch.float32)


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
