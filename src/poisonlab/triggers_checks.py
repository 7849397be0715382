"""Parameter checks for triggers: one-line errors, size/colour parsing, shapes, formatting.

Helpers of :mod:`poisonlab.triggers` (BadNets, Gu et al. 2017, arXiv 1708.06733; blended
injection, Chen et al. 2017, arXiv 1712.05526); every message names the trigger kind and
the fix.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NoReturn, Union

import torch

from . import icons
from .checks import is_number, is_whole
from .errors import PoisonlabError, shown

MAX_PIXELS = 4096
"""Trigger sizes, margins and positions are at most this many pixels (the image is checked later)."""

Shape = tuple[int, int, int]
Color = Union[float, tuple[float, ...]]
Size = Union[int, float, tuple[Union[int, float], Union[int, float]]]


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


def _color_problem(color: Color, channels: int) -> str | None:
    n = 1 if isinstance(color, float) else len(color)
    if n in (1, 3, channels):
        return None
    return (f"has {n} values but the image has {channels} channels; give one number, "
            f"{channels} per-channel values, or 3 RGB values")



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
