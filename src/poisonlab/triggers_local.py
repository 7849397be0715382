"""Local triggers in the style of BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733).

``single-pixel``, ``pattern``, ``patch`` and ``image``: a rectangle stamped at a corner, a
pixel position or a relative centre (see :class:`_Placed`). :mod:`poisonlab.triggers`
registers these kinds; build them with :func:`poisonlab.triggers.build_trigger`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import icons
from .checks import is_number, is_whole
from .errors import did_you_mean
from .triggers_checks import (
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
)
from .triggers_pixels import _channel_values, _composite, _icon_premult, _load_file, _premult_resized, _rgb_to_channels

CORNERS: tuple[str, ...] = ("bottom-right", "bottom-left", "top-right", "top-left")
DEFAULT_CORNER = "bottom-right"
DEFAULT_MARGIN = 1
MAX_PATTERN = 256
"""A ``pattern`` has at most this many rows and columns."""
DEFAULT_PATTERN: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0))


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


@dataclass(frozen=True, kw_only=True)
class SinglePixelTrigger(_Local):
    """One pixel set to ``value`` (BadNets' single-pixel backdoor, arXiv 1708.06733).

    ``value``: number in [0, 1] or per-channel/RGB list, default 1.0 (white).
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    kind: ClassVar[str] = "single-pixel"

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


@dataclass(frozen=True, kw_only=True)
class PatternTrigger(_Local):
    """A small fixed pixel pattern (BadNets' pattern backdoor, arXiv 1708.06733).

    ``pattern``: 2-D list of cells, default 3x3 ``[[1,0,1],[0,1,0],[1,0,1]]``; a cell c in
    [0, 1] sets the pixel to ``c * value`` (1 = bright, 0 = black: the whole pattern
    overwrites), and ``None``/``null`` leaves the pixel unchanged.
    ``value``: the bright colour, number or per-channel/RGB list, default 1.0.
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    kind: ClassVar[str] = "pattern"

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


@dataclass(frozen=True, kw_only=True)
class PatchTrigger(_Local):
    """A solid rectangle of one colour (BadNets' yellow square, arXiv 1708.06733).

    ``color``: number or per-channel/RGB list in [0, 1], default 1.0 (white); e.g.
    ``[1, 1, 0]`` is yellow (grey images get its luminance).
    ``size``: pixels (int), a fraction of the shorter image side (float in (0, 1]),
    or ``[height, width]`` of those (fractions per axis); default 0.1.
    Placement: see :class:`_Placed` (default bottom-right, margin 1).
    """

    kind: ClassVar[str] = "patch"

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

    kind: ClassVar[str] = "image"

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
