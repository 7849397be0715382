"""Benchmark: the Fine-Pruning curve (Liu et al. 2018) with and without the activation cache.

Both paths run the whole curve of small-cnn's last conv layer on the same synthetic
GTSRB-sized data (3x32x32, 43 classes) in one process: the cached path computes the
activation point's output once per data set and runs only the layers after it at each
step; the full-forward path (forced by disabling the model split) re-runs the whole
network per step, as before the cache. The rows must agree exactly; the script prints both
times and their ratio and writes them to bench/last_pruning_curve.json.

    python bench/pruning_curve.py [--rows 2000] [--step 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from poisonlab.data.base import Dataset
from poisonlab.defenses import pruning
from poisonlab.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000, help="rows in each of the validation and test sets")
    ap.add_argument("--step", type=int, default=8, help="channels pruned per step (128 channels in all)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("small-cnn", (3, 32, 32), 43, {"convs_per_block": 1, "width": 32}).eval()
    classes = [str(i) for i in range(43)]
    val = Dataset(torch.rand(args.rows, 3, 32, 32), torch.randint(0, 43, (args.rows,)), classes)
    test = Dataset(torch.rand(args.rows, 3, 32, 32), torch.randint(0, 43, (args.rows,)), classes)

    start = time.perf_counter()
    cached = pruning.pruning_curve(model, None, val, test, step=args.step)
    t_cached = time.perf_counter() - start
    split = pruning.split_at
    pruning.split_at = lambda *_: None  # type: ignore[assignment]  # the full-forward path
    try:
        start = time.perf_counter()
        full = pruning.pruning_curve(model, None, val, test, step=args.step)
        t_full = time.perf_counter() - start
    finally:
        pruning.split_at = split
    same = cached.rows == full.rows
    out = {"rows": args.rows, "steps": len(cached.rows), "threads": args.threads, "cached_seconds": t_cached,
           "full_forward_seconds": t_full, "speedup": t_full / t_cached, "rows_identical": same}
    print(f"pruning curve, {len(cached.rows)} steps, {args.rows} val + {args.rows} test rows, {args.threads} threads: "
          f"cached {t_cached:.1f}s, full forward {t_full:.1f}s -> {t_full / t_cached:.1f}x; rows identical: {same}")
    Path(__file__).with_name("last_pruning_curve.json").write_text(json.dumps(out, indent=2) + "\n")
    if not same:
        raise SystemExit("the two paths disagree")


if __name__ == "__main__":
    main()
