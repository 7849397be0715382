"""Run poisonlab on hostile input in a child process with bounded memory and time.

A bomb test must not take the machine down when the code under test fails, so every
child runs under an address-space cap (``RLIMIT_AS``) and a wall-clock timeout; its peak
resident memory comes back from ``wait4`` (the child's own, not the test process's).
"""
from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
# address space allowed to a child: torch alone maps about 650 MiB of it
DEFAULT_CAP_MIB = 2048
# the acceptance bound of the hostile-input issue: peak memory above an idle child's
EXTRA_MIB = 512


@dataclass
class Outcome:
    """What a child did: exit status, output, peak resident memory and wall time."""

    returncode: int
    stdout: str
    stderr: str
    peak_mib: float
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def _limits(cap_mib: int):
    def apply() -> None:
        cap = cap_mib * MIB
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()  # a timeout kills the whole group

    return apply


def run_child(argv: list[str], *, cwd: Path | None = None, cap_mib: int = DEFAULT_CAP_MIB,
              timeout: float = 60.0, env: dict[str, str] | None = None, stdin: str | None = None) -> Outcome:
    """Run ``argv`` under the memory cap; a child past ``timeout`` is killed and fails the test."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "",
                "MALLOC_ARENA_MAX": "2",  # fewer reserved malloc arenas: the cap measures what is used
                "POISONLAB_DATA": os.environ.get("POISONLAB_DATA", str(cwd or ROOT) + "/.no-data"),
                **(env or {})}
    full_env.pop("PYTHONFAULTHANDLER")
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.PIPE if stdin is not None else
                            subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_limits(cap_mib))
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{' '.join(argv)} still running after {timeout:.0f}s (a hang)") from None
    seconds = time.perf_counter() - start
    # communicate() reaped the child; its peak is in the children's rusage only as a max over
    # all children, so each child is measured by the high-water mark it reports itself
    return Outcome(proc.returncode, out, err, _peak_from(err), seconds)


def _peak_from(stderr: str) -> float:
    for line in stderr.splitlines()[::-1]:
        if line.startswith("__peak_kib__ "):
            return int(line.split()[1]) / 1024
    return float("nan")


# A wrapper that runs the CLI (or a snippet) and prints its own peak RSS last on stderr, so a
# test can read the memory of that one child even when tests run in parallel.
_WRAPPER = r"""
import atexit, sys
def _peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            sys.stderr.write('__peak_kib__ ' + line.split()[1] + '\n')
atexit.register(_peak)
mode, payload = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
if mode == 'cli':
    sys.argv = ['poisonlab'] + sys.argv[1:]
    from poisonlab.cli import main
    main()
else:
    from poisonlab.cli import guarded
    guarded(lambda: exec(compile(payload, '<hostile-snippet>', 'exec'), {'__name__': '__main__'}))
"""


def run_cli(args: list[str], **kwargs) -> Outcome:
    """``poisonlab ARGS`` in a capped child."""
    out = run_child([sys.executable, "-c", _WRAPPER, "cli", "", *args], **kwargs)
    return _strip_peak(out)


def run_python(code: str, **kwargs) -> Outcome:
    """A Python snippet in a capped child (for loaders with no command of their own); a
    :class:`PoisonlabError` it raises ends as the CLI's would, in one line and exit status 2."""
    out = run_child([sys.executable, "-c", _WRAPPER, "py", code], **kwargs)
    return _strip_peak(out)


def _strip_peak(out: Outcome) -> Outcome:
    out.stderr = "\n".join(ln for ln in out.stderr.splitlines() if not ln.startswith("__peak_kib__ "))
    return out


@functools.lru_cache(maxsize=1)
def idle_peak_mib() -> float:
    """Peak memory of a child that imports poisonlab, its data loaders and torch, and stops."""
    out = run_python("import poisonlab.cli, poisonlab.config, poisonlab.data, poisonlab.store, torch")
    assert out.returncode == 0, out.stderr
    return out.peak_mib


def assert_one_line_error(out: Outcome, *needles: str, max_seconds: float = 30.0) -> str:
    """The child failed cleanly: exit 2, one ``error:`` line naming every needle, no traceback,
    memory within :data:`EXTRA_MIB` of an idle child and time under ``max_seconds``."""
    lines = out.error_lines
    assert out.returncode == 2, f"exit {out.returncode}, stderr:\n{out.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert out.peak_mib < idle_peak_mib() + EXTRA_MIB, f"peak {out.peak_mib:.0f} MiB (idle {idle_peak_mib():.0f})"
    assert out.seconds < max_seconds, f"took {out.seconds:.1f}s"
    _record(out, lines[0])
    return lines[0]


def _record(out: Outcome, line: str) -> None:
    """With ``$POISONLAB_HOSTILE_REPORT`` set, append what this case cost to that JSON-lines
    file (bench/hostile_report.py turns it into the table of docs/security.md)."""
    report = os.environ.get("POISONLAB_HOSTILE_REPORT")
    if not report:
        return
    import json

    row = {"test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], "exit": out.returncode,
           "peak_mib": round(out.peak_mib, 1), "idle_mib": round(idle_peak_mib(), 1),
           "seconds": round(out.seconds, 2), "error": line}
    with open(report, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
