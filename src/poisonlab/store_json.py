"""Reading the JSON a run store holds (``metrics.json``, cache entries, index columns).

Store files may be damaged or written by an attacker, so every read is bounded: a regular
file only (no FIFO, device or directory), at most :data:`MAX_BYTES`, nesting at most
:data:`MAX_DEPTH` deep (``json.loads`` of 100,000 ``[`` raises ``RecursionError``). Damage is
a :class:`StoreDamage`, a one-line :class:`~poisonlab.errors.PoisonlabError`.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import PoisonlabError, one_line

MAX_BYTES = 32 << 20
"""The largest JSON file or index column read (a subpop run's metrics.json is a few MiB)."""
MAX_DEPTH = 64
"""The deepest nesting accepted (poisonlab writes at most 6 levels)."""


class StoreDamage(PoisonlabError):
    """A run-store file or index row is damaged: unreadable, not JSON, or the wrong shape."""


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), counted without recursion and
    stopping once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads(text: str | bytes, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """``text`` decoded as JSON; a :class:`StoreDamage` naming ``what`` when it is not JSON
    or nested deeper than ``max_depth``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise StoreDamage(f"{what} is nested too deeply to be poisonlab's") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, huge integers
        raise StoreDamage(f"{what} is not valid JSON ({one_line(str(exc), 120)})") from None
    if depth(value, max_depth) > max_depth:
        raise StoreDamage(f"{what} is nested more than {max_depth} levels deep")
    return value


def read_bytes(path: Path, what: str, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of regular file ``path`` (opened without blocking, so a FIFO cannot hang
    the reader); :class:`FileNotFoundError` when missing, :class:`StoreDamage` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreDamage(f"{what} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreDamage(f"{what} is not a regular file")
        if info.st_size > max_bytes:
            raise StoreDamage(f"{what} is {info.st_size} bytes, over the {max_bytes} a store file may hold")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StoreDamage(f"{what} grew past {max_bytes} bytes while being read")
    return data


def read_json(path: Path, what: str | None = None, max_bytes: int = MAX_BYTES) -> Any:
    """JSON file ``path``, bounded (see the module docstring)."""
    label = what or f"'{path}'"
    return loads(read_bytes(path, label, max_bytes), label)


def is_number(v: Any) -> bool:
    """A JSON number (int or float, NaN and infinities included), not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    """A finite JSON number."""
    return is_number(v) and math.isfinite(v)


def need_number(obj: Any, *keys: str, what: str, optional: bool = False) -> float | None:
    """``obj[k1][k2]...`` when it is a number (None when ``optional`` and absent or null);
    a :class:`StoreDamage` naming the dotted key otherwise."""
    v: Any = obj
    for k in keys:
        v = v.get(k) if isinstance(v, dict) else None
    if v is None and optional:
        return None
    if not is_number(v):
        raise StoreDamage(f"{what} has no number at {'.'.join(keys)}")
    return float(v)


def check_metrics(metrics: Any, what: str) -> dict[str, Any]:
    """``metrics`` when it has the shape every poisonlab ``metrics.json`` shares (a mapping with
    ``time.total_seconds`` and ``peak_memory_mb.rss``); a :class:`StoreDamage` otherwise."""
    if not isinstance(metrics, dict):
        raise StoreDamage(f"{what} holds {type(metrics).__name__}, not a mapping of metrics")
    need_number(metrics, "time", "total_seconds", what=what)
    need_number(metrics, "peak_memory_mb", "rss", what=what)
    return metrics
