"""Golden metrics (issue 11): the committed examples still give the numbers recorded before the
core was reshaped (``tests/golden/*.json``, written by ``python tests/golden/capture.py --write``).

On the machine that recorded a file (same CPU model, torch version and thread count) every
number must be reproduced exactly; elsewhere rates may move by at most the file's tolerance
(2 points: another processor's CPU kernels can change the last digits of sums, flipping a few
test predictions) and counts must be equal.
"""
from __future__ import annotations

import json
import math

import pytest

from golden import capture

COUNTS = ("n_poison", "units_pruned")


def _golden(name: str) -> dict:
    return json.loads((capture.HERE / f"{name}.json").read_text())


def compare(name: str, got: dict[str, float]) -> list[str]:
    """Every difference between ``got`` and the golden file of ``name``, one line each."""
    doc = _golden(name)
    exact = doc["machine"] == capture.machine()
    want = doc["metrics"]
    problems = [f"{k}: missing" for k in sorted(set(want) - set(got))]
    problems += [f"{k}: not in the golden file" for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        w, g = want[key], got[key]
        if isinstance(w, float) and math.isnan(w):
            ok = isinstance(g, float) and math.isnan(g)
        elif exact or key.endswith(COUNTS):
            ok = g == w
        else:
            ok = abs(g - w) <= doc["tolerance"]
        if not ok:
            problems.append(f"{key}: golden {w!r}, got {g!r}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(capture.EXPERIMENTS))
def test_golden_metrics(name: str) -> None:
    if name in capture.NEEDS_SHARED_DATA and not capture.DATA.is_dir():
        pytest.skip(f"needs the real data in {capture.DATA}")
    problems = compare(name, capture.measure(name))
    assert not problems, f"{name} moved from its golden metrics:\n" + "\n".join(problems)


def test_compare_flags_a_moved_number() -> None:
    doc = _golden("digits_demo")
    got = dict(doc["metrics"])
    assert compare("digits_demo", got) == []
    key = "victim.clean_accuracy"
    got[key] = got[key] - 0.05  # beyond any tolerance
    assert compare("digits_demo", got) == [f"{key}: golden {doc['metrics'][key]!r}, got {got[key]!r}"]
    got.pop("attack.n_poison")
    assert "attack.n_poison: missing" in compare("digits_demo", got)
