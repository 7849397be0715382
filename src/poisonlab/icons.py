"""Built-in trigger icons, drawn by code (no image files are shipped).

BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733) backdoors a traffic-sign
detector with stickers: a yellow square, a bomb and a flower. These are stand-ins for
those stickers: each icon is drawn with Pillow's ``ImageDraw`` at :data:`SUPERSAMPLE`
times the requested size and box-filtered down (on premultiplied colour), which gives
antialiased edges. Rendering is deterministic: the same name and size always give the
same bits.

>>> render_icon("bomb", 8).shape
torch.Size([4, 8, 8])
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import PoisonlabError, did_you_mean

SUPERSAMPLE = 4
"""Icons are drawn at this many times the requested side, then downsampled."""

Painter = Callable[[ImageDraw.ImageDraw, int], None]


def _box(cx: float, cy: float, r: float, n: int) -> list[float]:
    """Bounding box [x0, y0, x1, y1] in canvas pixels of a circle given in fractions."""
    x0, y0 = (cx - r) * n, (cy - r) * n
    return [x0, y0, max(x0, (cx + r) * n - 1), max(y0, (cy + r) * n - 1)]


def _star(cx: float, cy: float, outer: float, inner: float, points: int, n: int) -> list[tuple[float, float]]:
    """Vertices of a star polygon (alternating outer and inner radii), in canvas pixels."""
    verts = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        angle = math.pi * k / points - math.pi / 2
        verts.append(((cx + r * math.cos(angle)) * n, (cy + r * math.sin(angle)) * n))
    return verts


def _draw_bomb(draw: ImageDraw.ImageDraw, n: int) -> None:
    """A black round bomb with a cap, a fuse and a spark (the BadNets "bomb" sticker)."""
    cx, cy, r = 0.44, 0.60, 0.34
    draw.ellipse(_box(cx, cy, r, n), fill=(20, 20, 20, 255))
    draw.ellipse(_box(0.32, 0.48, 0.07, n), fill=(95, 95, 95, 255))  # highlight
    # Cap: a small rectangle on the body's upper-right, aligned with the radius at 45 deg.
    d, p = (math.sqrt(0.5), -math.sqrt(0.5)), (math.sqrt(0.5), math.sqrt(0.5))
    mx, my = cx + r * d[0], cy + r * d[1]
    cap = [
        (mx + sa * 0.07 * d[0] + sb * 0.06 * p[0], my + sa * 0.07 * d[1] + sb * 0.06 * p[1])
        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    draw.polygon([(x * n, y * n) for x, y in cap], fill=(60, 60, 60, 255))
    fuse = [(0.72 * n, 0.30 * n), (0.78 * n, 0.21 * n), (0.85 * n, 0.14 * n)]
    draw.line(fuse, fill=(150, 105, 55, 255), width=max(1, round(0.04 * n)), joint="curve")
    draw.polygon(_star(0.86, 0.12, 0.11, 0.045, 8, n), fill=(255, 150, 0, 255))  # spark
    draw.ellipse(_box(0.86, 0.12, 0.035, n), fill=(255, 240, 90, 255))


def _draw_flower(draw: ImageDraw.ImageDraw, n: int) -> None:
    """Six pink petals around a yellow centre (the BadNets "flower" sticker)."""
    for k in range(6):
        angle = 2 * math.pi * k / 6
        draw.ellipse(
            _box(0.5 + 0.27 * math.cos(angle), 0.5 + 0.27 * math.sin(angle), 0.2, n),
            fill=(230, 60, 120, 255),
        )
    draw.ellipse(_box(0.5, 0.5, 0.16, n), fill=(255, 210, 40, 255))


def _draw_square(draw: ImageDraw.ImageDraw, n: int) -> None:
    """A solid, fully opaque yellow square (the BadNets "yellow square" sticker)."""
    draw.rectangle([0, 0, n - 1, n - 1], fill=(255, 255, 0, 255))


_PAINTERS: dict[str, Painter] = {"bomb": _draw_bomb, "flower": _draw_flower, "square": _draw_square}

ICONS: tuple[str, ...] = tuple(_PAINTERS)
"""Names of the built-in icons."""


def _downsample(rgba: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an (N, N, 4) straight-alpha array by ``factor``, averaging premultiplied colour."""
    alpha = rgba[..., 3:]
    premult = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)
    s = rgba.shape[0] // factor
    small = premult.reshape(s, factor, s, factor, 4).mean(axis=(1, 3))
    a = small[..., 3:]
    rgb = np.divide(small[..., :3], a, out=np.zeros_like(small[..., :3]), where=a > 0)
    return np.concatenate([np.clip(rgb, 0.0, 1.0), a], axis=-1)


@lru_cache(maxsize=64)
def _render(name: str, size: int) -> np.ndarray:
    n = size * SUPERSAMPLE
    canvas = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    _PAINTERS[name](ImageDraw.Draw(canvas), n)
    big = np.asarray(canvas, dtype=np.float64) / 255.0
    small = _downsample(big, SUPERSAMPLE).astype(np.float32)
    small.setflags(write=False)
    return small


def render_icon(name: str, size: int) -> torch.Tensor:
    """The icon ``name`` as a float32 RGBA tensor (4, size, size) in [0, 1], straight alpha.

    Antialiased by drawing at ``SUPERSAMPLE`` x resolution and downsampling; deterministic.
    Returns a fresh tensor (safe to modify).
    """
    if not isinstance(name, str) or name not in _PAINTERS:
        hint = did_you_mean(name, ICONS) if isinstance(name, str) else ""
        raise PoisonlabError(f"unknown icon {name!r}{hint}; built-in icons: {', '.join(ICONS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise PoisonlabError(f"icon size must be a whole number of pixels >= 1, got {size!r}")
    return torch.from_numpy(_render(name, size).copy()).permute(2, 0, 1).contiguous()
