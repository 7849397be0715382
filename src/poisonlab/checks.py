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


# ----------------------------------------------------------------------------- bounds of config values

INT_LIMIT = 2**63
"""No integer in a config may reach ±2**63 (what numpy and torch hold)."""
SEED_MAX = 2**32 - 1
"""Seeds are in 0..2**32-1 (what ``numpy.random.seed`` accepts)."""
MAX_BATCH = 1 << 20
MAX_EPOCHS = 10_000
MAX_LR = 10.0
MAX_ROWS = 10**9
MAX_COUNT = 1_000_000
"""Default upper bound of a count (channels, clusters, features, overlays...) in a config."""
MAX_CONFIG_VALUES = 100_000

MAX_HIDDEN_LAYERS = 16
MAX_WIDTH = 16_384
MAX_CNN_WIDTH = 512


def check_model_options(options: Any, where: str = "model.options") -> None:
    """Bounds of the sizes in a ``model.options`` mapping (the model builder checks names and
    types): ``hidden`` at most 16 layers of 1..16384 units, ``width`` 1..512."""
    from .errors import PoisonlabError

    if not isinstance(options, dict):
        return
    hidden = options.get("hidden")
    if isinstance(hidden, (list, tuple)):
        if len(hidden) > MAX_HIDDEN_LAYERS:
            raise PoisonlabError(f"{where}.hidden lists {len(hidden)} layers; at most {MAX_HIDDEN_LAYERS} are allowed")
        for i, h in enumerate(hidden):
            need_int(h, f"{where}.hidden[{i}]", 1, MAX_WIDTH, "units of a hidden layer")
    elif hidden is not None:
        need_int(hidden, f"{where}.hidden", 1, MAX_WIDTH, "units of the hidden layer")
    if "width" in options:
        need_int(options["width"], f"{where}.width", 1, MAX_CNN_WIDTH, "channels of the first block")


def need_int(v: Any, where: str, lo: int, hi: int, what: str = "") -> int:
    """``v`` as an int in ``lo..hi``; else a one-line error naming ``where`` and the range.

    >>> need_int(3, "train.epochs", 1, 10)
    3
    """
    from .errors import PoisonlabError, shown

    hint = f" ({what})" if what else ""
    if not is_whole(v):
        raise PoisonlabError(f"{where} must be an integer in {lo}..{hi}{hint}, got {shown(v)}")
    if not lo <= v <= hi:
        raise PoisonlabError(f"{where} must be in {lo}..{hi}{hint}, got {shown(v)}")
    return int(v)


def need_number(v: Any, where: str, lo: float, hi: float, *, low_open: bool = False, high_open: bool = False,
                what: str = "") -> float:
    """``v`` as a finite float in the interval from ``lo`` to ``hi`` (open ends as asked); else a
    one-line error naming ``where`` and the interval.

    >>> need_number(0.5, "train.lr", 0, 10, low_open=True)
    0.5
    """
    from .errors import PoisonlabError, shown

    interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
    hint = f" ({what})" if what else ""
    ok = is_number(v) and (lo < v if low_open else lo <= v) and (v < hi if high_open else v <= hi)
    if not ok:
        kind = "" if is_number(v) else "a finite number "
        raise PoisonlabError(f"{where} must be {kind}in {interval}{hint}, got {shown(v)}")
    return float(v)


def _number_problem(value: Any) -> str | None:
    """Why a scalar is no number a config may hold (None: fine, or not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral) and not -INT_LIMIT < int(value) < INT_LIMIT:
        return "an integer within ±2**63"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        return "a finite number"
    return None


def check_values(raw: Any, where: str = "", limit: int = MAX_CONFIG_VALUES) -> None:
    """Walk a raw config (mappings, lists, scalars) and refuse, with the key path, any float that
    is not finite (``.inf``, ``.nan``), any integer beyond ±2**63 (values and keys) and more than
    ``limit`` values in all (aliases counted as often as they are reached). Iterative: no
    recursion limit.

    >>> check_values({"train": {"lr": float("inf")}})
    Traceback (most recent call last):
    poisonlab.errors.PoisonlabError: config key 'train.lr' must be a finite number, got inf
    """
    from .errors import PoisonlabError, shown

    stack: list[tuple[Any, str]] = [(raw, where)]
    seen = 0
    while stack:
        value, path = stack.pop()
        seen += 1
        if seen > limit:
            raise PoisonlabError(f"the config holds more than {limit} values; a config needs far fewer")
        label = path or "config"
        if isinstance(value, dict):
            for k, v in value.items():
                if (problem := _number_problem(k)) is not None:
                    raise PoisonlabError(f"config key '{label}' has a key that is not {problem}: {shown(k)}")
                stack.append((v, f"{path}.{one_key(k)}" if path else one_key(k)))
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, f"{label}[{i}]") for i, v in enumerate(value))
        elif (problem := _number_problem(value)) is not None:
            raise PoisonlabError(f"config key '{label}' must be {problem}, got {shown(value)}")


def one_key(key: Any) -> str:
    """A mapping key as it appears in a key path (short, one line)."""
    from .errors import shown

    return key if isinstance(key, str) and len(key) <= 60 and key.isprintable() else shown(key, 60)
