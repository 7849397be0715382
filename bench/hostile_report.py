"""What each hostile input of the test suite costs: exit status, peak memory above an idle
child, seconds, and the one error line (docs/security.md, "Measured").

Peak memory is each child's own high-water mark (VmHWM) minus that of a child that only
imports poisonlab and torch; a negative difference (the case stopped before importing as
much) is shown as 0. Runs the hostile-input tests with ``$POISONLAB_HOSTILE_REPORT`` set, so that every case
checked by ``tests/hostile.py::assert_one_line_error`` records its child's numbers, then
prints a markdown table and the worst case. Usage::

    .venv/bin/python bench/hostile_report.py [--out bench/last_hostile.json] [-k EXPR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_hostile_data.py", "tests/test_hostile_folders.py", "tests/test_hostile_config.py",
         "tests/test_store_hostile.py"]


_TMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/]+/|/tmp/pl-[^/]+/")


def table(rows: list[dict]) -> str:
    """One markdown row per test function (its parameters together): cases, the worst peak above
    the idle child and the slowest time, and the error line of its first case without tmp paths."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["test"].split("::", 1)[-1].split("[", 1)[0], []).append(r)
    out = ["| test (cases) | exit | peak above idle, MiB (max) | seconds (max) | first case's error line |",
           "|---|---:|---:|---:|---|"]
    for name, cases in groups.items():
        exits = "/".join(sorted({str(c["exit"]) for c in cases}))
        peak = max(c["peak_mib"] - c["idle_mib"] for c in cases)
        error = _TMP.sub("…/", cases[0]["error"]).removeprefix("error: ")[:110].replace("|", "\\|")
        out.append(f"| `{name}` ({len(cases)}) | {exits} | {max(peak, 0):.0f} | "
                   f"{max(c['seconds'] for c in cases):.1f} | {error} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "last_hostile.json")
    parser.add_argument("-k", default=None, help="only the tests matching this pytest expression")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "hostile.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES]
        if args.k:
            cmd += ["-k", args.k]
        code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "POISONLAB_HOSTILE_REPORT": str(report)})
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    if not rows:
        print("error: no case recorded; did the tests run?", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    worst_mem = max(rows, key=lambda r: r["peak_mib"] - r["idle_mib"])
    worst_time = max(rows, key=lambda r: r["seconds"])
    print(f"\n{len(rows)} cases; idle child {rows[0]['idle_mib']:.0f} MiB; most memory above idle: "
          f"{worst_mem['peak_mib'] - worst_mem['idle_mib']:.0f} MiB ({worst_mem['test'].split('::')[-1]}); "
          f"slowest: {worst_time['seconds']:.1f}s ({worst_time['test'].split('::')[-1]}); pytest exit {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
