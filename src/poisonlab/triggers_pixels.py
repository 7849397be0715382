"""Trigger pixels: colour per channel, alpha compositing, RGBA image files and icons, noise keys.

Helpers of :mod:`poisonlab.triggers`: the alpha-stamped stickers of BadNets (Gu et al. 2017,
arXiv 1708.06733) and the blend keys of Chen et al. 2017 (arXiv 1712.05526). Colours on
images with other than 3 channels become their luminance (ITU-R BT.601, as Pillow's "L").
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F

from . import icons
from .errors import PoisonlabError
from .triggers_checks import Color, _check_batch

LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luminance weights (Pillow's RGB -> "L")."""


def _rgb_to_channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """(3, ...) RGB -> (channels, ...): unchanged for 3 channels, else luminance on every channel."""
    if channels == 3:
        return rgb
    luma = LUMA[0] * rgb[0] + LUMA[1] * rgb[1] + LUMA[2] * rgb[2]
    return luma.unsqueeze(0).expand(channels, *luma.shape).clone()



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



@lru_cache(maxsize=32)
def _noise(seed: int, c: int, h: int, w: int) -> torch.Tensor:
    """Uniform [0, 1) noise (c, h, w) from ``seed``; the same for the same seed and shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((c, h, w), generator=gen, dtype=torch.float32)
