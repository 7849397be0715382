"""docs/extending.md runs as written: its python blocks, in order, in one fresh interpreter
register an attack family with its measure, a defense, a learner and a data reader, then run a
grid of them through ``poisonlab matrix``."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_extending_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5, "the page lost its examples"
    script = tmp_path / "extending.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "test error % (mean ± std)" in out and "drop-newest" in out and "cells: 2 computed, 0 reused" in out
