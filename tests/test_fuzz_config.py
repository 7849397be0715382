"""Fuzz the config parsers with seeded mutations of the example configs.

Each case (a truncation, flipped characters, deleted or duplicated lines, numbers replaced by
extreme values, keys renamed...) goes through the loader of its family
(:func:`~poisonlab.config.load_config` plus the attack / defense / pruning-aware parsers,
:func:`~poisonlab.subpop.config.load_subpop_config`, :func:`~poisonlab.matrix.load_grid`) and
must validate or raise a one-line :class:`PoisonlabError` of bounded length. Anything else (another
exception, a crash, a case past its time) fails the test naming the seed and the case. One capped
child runs every case of a family (tests/hostile.py). ``POISONLAB_FUZZ_CASES`` sets the cases per
family (default 1000), ``POISONLAB_FUZZ_SEED`` the seed.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from hostile import ROOT, run_python

EXAMPLES = ROOT / "examples"
FAMILIES = {
    "experiment": sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith(("subpop_", "matrix_"))),
    "subpop": sorted(EXAMPLES.glob("subpop_*.yaml")),
    "matrix": sorted(EXAMPLES.glob("matrix_*.yaml")),
}
CASES = int(os.environ.get("POISONLAB_FUZZ_CASES", "1000"))
SEED = int(os.environ.get("POISONLAB_FUZZ_SEED", "20240611"))
MAX_MESSAGE = 1000
CASE_SECONDS = 10

EXTREMES = ["1e308", "-1e308", "-1", "0", "-0.0", ".nan", ".inf", "-.inf", str(2**70), str(-2**70), str(2**64),
            str(2**32), "1e12", "1e-320", "0.5", "1.0", "2.5", "999999999999", "null", "true", "'x'", "''",
            "[1, 2]", "[]", "{a: 1}", "{}", "[[[[1]]]]", "*nope", "&a 1", "!!binary aGk=", "!!set {a}",
            "2001-12-14", "0x7fffffffffffffff", "0b1", "1:30", '"\\u0000"', "'" + "w" * 300 + "'"]
TEXT_CHARS = list(":-[]{},&*!|>#'\"%@`?\t\n ") + ["\x00", "\u2028", "\ufeff", "é", "0", "9", ".", "e", "a"]
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])")
KEY = re.compile(r"^(\s*-?\s*)([A-Za-z_][\w-]*)(:)", re.M)


def _truncate(rng: random.Random, text: str, keys: list[str]) -> str:
    return text[: rng.randrange(len(text) + 1)]


def _flip(rng: random.Random, text: str, keys: list[str]) -> str:
    i = rng.randrange(len(text) or 1)
    return text[:i] + rng.choice(TEXT_CHARS) + text[i + 1:]


def _lines(rng: random.Random, text: str, keys: list[str]) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    roll = rng.random()
    if roll < 0.4:
        del lines[i]
    elif roll < 0.8:
        lines.insert(i, lines[i])
    else:
        lines[i] = (" " * rng.choice([1, 2, 4]) + lines[i]) if rng.random() < 0.5 else lines[i].lstrip()
    return "".join(lines)


def _number(rng: random.Random, text: str, keys: list[str]) -> str:
    found = list(NUMBER.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    return text[:m.start()] + rng.choice(EXTREMES) + text[m.end():]


def _value(rng: random.Random, text: str, keys: list[str]) -> str:
    found = [m for m in re.finditer(r": ([^\n#]+)", text)]
    if not found:
        return text
    m = rng.choice(found)
    return text[:m.start(1)] + rng.choice(EXTREMES) + text[m.end(1):]


def _key(rng: random.Random, text: str, keys: list[str]) -> str:
    found = list(KEY.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    new = rng.choice(keys) if rng.random() < 0.7 else m.group(2)[:-1] + rng.choice("xs_")
    return text[:m.start(2)] + new + text[m.end(2):]


def _alias(rng: random.Random, text: str, keys: list[str]) -> str:
    """Anchor one value and refer to it elsewhere (legit or not, depending on where)."""
    found = list(re.finditer(r": ([^\n#]+)", text))
    if len(found) < 2:
        return text
    a, b = sorted(rng.sample(found, 2), key=lambda m: m.start())
    return text[:a.start(1)] + "&z " + text[a.start(1):b.start(1)] + "*z" + text[b.end(1):]


MUTATIONS = [_truncate, _flip, _lines, _number, _number, _value, _value, _key, _alias]


def mutate(rng: random.Random, text: str, keys: list[str]) -> str:
    """One to three seeded mutations of ``text``."""
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATIONS)(rng, text, keys)
    return text


def _validate_experiment(path: Path) -> None:
    from poisonlab.attacks import build_attack
    from poisonlab.attacks.pruning_aware import pruning_aware_config
    from poisonlab.config import load_config
    from poisonlab.defend import check_defenses

    cfg = load_config(path)
    if cfg.attack is not None:
        build_attack(cfg.attack)
    check_defenses(cfg.defenses)
    if cfg.pruning_aware is not None:
        pruning_aware_config(cfg.pruning_aware, cfg.train)


def _validate_subpop(path: Path) -> None:
    from poisonlab.subpop.config import load_subpop_config

    load_subpop_config(path)


def _validate_matrix(path: Path) -> None:
    from poisonlab.matrix import load_grid

    load_grid(path, output_dir="/nonexistent-never-written")


class _Hang(Exception):
    pass


def run_family(family: str, seed: int, cases: int, workdir: str) -> int:
    """Run ``cases`` mutated configs of ``family``; print one FUZZ-FAIL line per bad outcome and
    return how many there were (run inside the capped child)."""
    import signal
    import traceback

    from poisonlab import progress
    from poisonlab.errors import PoisonlabError

    progress.set_enabled(False)
    validate = {"experiment": _validate_experiment, "subpop": _validate_subpop, "matrix": _validate_matrix}[family]
    texts = [p.read_text() for p in FAMILIES[family]]
    keys = sorted({m.group(2) for t in texts for m in KEY.finditer(t)})

    def alarm(*_args: object) -> None:
        raise _Hang()

    signal.signal(signal.SIGALRM, alarm)
    rng = random.Random(f"{seed}-{family}")
    path = Path(workdir) / "case.yaml"
    failures = outcomes = 0
    for case in range(cases):
        text = mutate(rng, rng.choice(texts), keys)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        what = f"FUZZ-FAIL {family} seed={seed} case={case}"
        signal.alarm(CASE_SECONDS)
        try:
            validate(path)
            outcomes += 1
        except PoisonlabError as exc:
            message = str(exc)
            if len(message) > MAX_MESSAGE or len(message.splitlines()) > 1:
                failures += 1
                print(f"{what}: message of {len(message)} chars or not one line: {message[:200]!r}", flush=True)
        except _Hang:
            failures += 1
            print(f"{what}: still running after {CASE_SECONDS}s; config {text[:300]!r}", flush=True)
        except BaseException as exc:  # noqa: BLE001 - any other outcome is the bug this test looks for
            failures += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"{what}: {type(exc).__name__}: {str(exc)[:200]!r} at {where.filename}:{where.lineno}; "
                  f"config {text[:300]!r}", flush=True)
        finally:
            signal.alarm(0)
        if failures >= 20:
            break
    print(f"FUZZ-DONE {family} cases={case + 1} valid={outcomes} failures={failures}", flush=True)
    return failures


CHILD = """
import sys
sys.path.insert(0, {tests!r})
import test_fuzz_config as fuzz
sys.exit(1 if fuzz.run_family({family!r}, {seed!r}, {cases!r}, {workdir!r}) else 0)
"""


@pytest.mark.fuzz
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fuzzed_configs_validate_or_fail_in_one_line(tmp_path, family):
    assert FAMILIES[family], f"no example configs of family {family}"
    code = CHILD.format(tests=str(Path(__file__).parent), family=family, seed=SEED, cases=CASES,
                        workdir=str(tmp_path))
    out = run_python(code, cwd=tmp_path, timeout=60 + CASES * 0.5)
    report = [ln for ln in out.stdout.splitlines() if ln.startswith("FUZZ-")]
    failures = [ln for ln in report if ln.startswith("FUZZ-FAIL")]
    assert out.returncode == 0 and not failures, "\n".join(failures or [out.stderr[-3000:]])
    assert any(ln.startswith(f"FUZZ-DONE {family} cases={CASES} ") for ln in report), out.stdout[-2000:]


def test_mutations_are_seeded_and_change_the_text():
    text = FAMILIES["experiment"][0].read_text()
    keys = ["name", "seed", "train"]
    first = [mutate(random.Random("7"), text, keys) for _ in range(3)]
    again = [mutate(random.Random("7"), text, keys) for _ in range(3)]
    assert first == again
    rng = random.Random(1)
    assert sum(mutate(rng, text, keys) != text for _ in range(50)) >= 45
