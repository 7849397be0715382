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
