"""One exception type for every user-facing error.

The CLI catches :class:`PoisonlabError` and prints its message on one line with a
non-zero exit code, never a traceback. Messages say what is wrong and how to fix it.
"""
from __future__ import annotations


class PoisonlabError(Exception):
    """A user-facing error: bad input, missing file, unknown name, out-of-range value."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """Return a ' (did you mean X?)' hint when ``name`` is close to one of ``known``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (newlines and control characters shown as spaces), at most
    ``limit`` characters: an error message never spills a hostile value over the terminal.

    >>> one_line("a\\nb" + "x" * 700, 10)
    'a bxxxxxx…'
    """
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shown(value: object, limit: int = 80) -> str:
    """A short ``repr`` of a config or file value for an error message (hostile values can be huge)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 6, 6, 3
    return one_line(r.repr(value), limit)
