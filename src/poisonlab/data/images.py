"""Decoding untrusted image files with Pillow, size checked before any pixel is decoded.

``Image.open`` reads only the header; :func:`decode` compares the declared size with a
per-use cap right then, and turns Pillow's own decompression-bomb error and warning into
the same one-line error, so a PPM or PNG header declaring 20000x20000 pixels costs
nothing. Caps: :data:`GTSRB_MAX_PIXELS` (GTSRB signs are at most a few hundred pixels a
side) and :data:`TRIGGER_MAX_PIXELS` (trigger images are small stickers or keys); only
the formats in :data:`GTSRB_FORMATS` / :data:`TRIGGER_FORMATS` are tried.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np

from ..errors import PoisonlabError, one_line

GTSRB_MAX_PIXELS = 1024 * 1024
TRIGGER_MAX_PIXELS = 2048 * 2048
# plain raster formats decoded in process; never EPS/PDF-like plugins that hand the file to
# an external program (Ghostscript)
GTSRB_FORMATS = ("PPM", "PNG", "JPEG")
TRIGGER_FORMATS = ("PNG", "JPEG", "PPM", "BMP", "GIF", "WEBP")


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return one_line(text, 160)


def decode(data: bytes, label: str, *, mode: str, max_pixels: int, formats: Sequence[str] | None,
           what: str, fix: str, resize: tuple[int, int] | None = None) -> np.ndarray:
    """``data`` decoded to a uint8 array in ``mode`` ("RGB" or "RGBA"), refusing images over ``max_pixels``.

    ``formats`` limits the Pillow plugins tried (None: all); ``resize`` (width, height)
    resizes bilinearly when the image is another size. ``what`` starts the error message
    ("GTSRB: cannot decode image"), ``fix`` ends it.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(formats) if formats else None) as im:
                w, h = im.size
                if w <= 0 or h <= 0 or w * h > max_pixels:
                    raise PoisonlabError(f"{what} {one_line(label, 400)}: it declares {w}x{h} pixels, more than the "
                                         f"{max_pixels:,} allowed; {fix}")
                frame = im if im.mode == mode else im.convert(mode)
                if resize is not None and frame.size != resize:
                    frame = frame.resize(resize, Image.Resampling.BILINEAR)
                return np.asarray(frame, dtype=np.uint8)
    except PoisonlabError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PoisonlabError(f"{what} {one_line(label, 400)}: a decompression bomb ({_reason(e)}); {fix}") from e
    except Exception as e:  # noqa: BLE001 - any failure inside a corrupt image means "corrupt image"
        raise PoisonlabError(f"{what} {one_line(label, 400)} ({_reason(e)}); {fix}") from e
