"""Type checks shared by the config and argument validators (bools are not numbers here:
``True`` as a rate or a count is a mistake in a config, not 1)."""
from __future__ import annotations

import math
import numbers
from typing import Any


def is_number(v: Any) -> bool:
    """A finite real number (int, float or numpy scalar), not a bool.

    >>> is_number(0.5), is_number(True), is_number(float("nan")), is_number("1")
    (True, False, False, False)
    """
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def is_whole(v: Any) -> bool:
    """An integer (int or numpy integer), not a bool.

    >>> is_whole(3), is_whole(3.0), is_whole(False)
    (True, False, False)
    """
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
