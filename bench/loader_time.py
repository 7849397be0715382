"""Load time of the real data sets with the source tree given (best of 3), to compare the
hostile-input loaders with an older revision in the same run::

    git worktree add /tmp/oldtree daab338
    for t in /tmp/oldtree . /tmp/oldtree .; do .venv/bin/python bench/loader_time.py $t; done
"""
from __future__ import annotations

import sys
import time

sys.path.insert(0, sys.argv[1] + "/src")
from poisonlab.data import load_dataset  # noqa: E402

DATA = sys.argv[2] if len(sys.argv) > 2 else "../shared/data"
for name in ("mnist", "gtsrb"):
    times = []
    for _ in range(3):
        start = time.perf_counter()
        load_dataset(name, DATA)
        times.append(time.perf_counter() - start)
    print(f"{sys.argv[1]} {name} {min(times):.2f}s")
