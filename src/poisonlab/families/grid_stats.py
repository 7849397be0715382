"""Averages over a grid's seeds: mean and sample standard deviation (ddof=1), and their display."""
from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def stats(values: dict[str, list[float | None]]) -> dict[str, float | None]:
    """``{name}_mean`` and ``{name}_std`` over the seeds for each measure (None entries: not applicable, left out)."""
    out: dict[str, float | None] = {}
    for name, vals in values.items():
        kept = [float(v) for v in vals if v is not None]
        mean, std = mean_std(kept) if kept else (None, None)
        out[f"{name}_mean"], out[f"{name}_std"] = mean, std
    return out


def pm(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` scaled (percent by default); ``–`` for a missing mean or std."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{scale * mean:.{digits}f} ± " + ("–" if std is None else f"{scale * std:.{digits}f}")
