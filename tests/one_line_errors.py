"""Shared by the targeted tests: assert a one-line PoisonlabError."""
from __future__ import annotations

import pytest

from poisonlab.errors import PoisonlabError


def one_line(match, fn, *args, **kw) -> str:
    """Call ``fn``; it must raise a PoisonlabError matching ``match`` (a regex; "" matches any) on one line."""
    with pytest.raises(PoisonlabError, match=match or None) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)
