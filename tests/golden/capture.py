"""Golden metrics of the committed examples (issue 11): run them, keep the numbers that matter.

``python tests/golden/capture.py --write [NAME ...]`` runs each experiment and writes
``tests/golden/NAME.json``; ``tests/test_golden.py`` runs them again and compares. A golden
file records the machine it was measured on (CPU model, torch version, thread count): on
that machine the numbers must be reproduced exactly, elsewhere within :data:`TOLERANCE`
(CPU kernels of another processor can change the last digits of a sum, so a few test
predictions may flip; the committed MNIST example moved 0.03 points between two machines).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
DATA = ROOT.parent / "shared" / "data"
TOLERANCE = 0.02
"""Absolute tolerance for rates (accuracy, attack success, damage) on another machine: 2 points."""
THREADS = 2
"""Every golden run uses this many torch threads (CPU sums can depend on the thread count)."""


def machine() -> dict[str, Any]:
    """What a CPU result depends on beyond the config: processor, torch, thread count."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "machine": platform.machine(), "torch": torch.__version__, "threads": THREADS}


def _badnets_numbers(m: dict[str, Any]) -> dict[str, float]:
    victim = m.get("victim", m.get("badnet"))  # "badnet" before the pipeline (issue 11)
    out = {"baseline.clean_accuracy": m["baseline"]["clean_accuracy"],
           "baseline.attack_success_rate": m["baseline"]["attack_success_rate"],
           "victim.clean_accuracy": victim["clean_accuracy"],
           "victim.attack_success_rate": victim["attack_success_rate"],
           "attack.n_poison": m["attack"]["n_poison"]}
    for name, d in (m.get("defenses") or {}).items():
        out[f"{name}.clean_accuracy"] = d["clean_accuracy"]
        out[f"{name}.attack_success_rate"] = d["attack_success_rate"]
        if "detection" in d:
            out[f"{name}.poisons_removed"] = d["detection"]["recall"]
    return out


def _run(config: Path, overrides: list[str], out: str) -> dict[str, Any]:
    from poisonlab.config import load_config
    from poisonlab.experiment import run_experiment

    cfg = load_config(config, [*overrides, f"output.dir={out}", "output.plots=false"])
    return run_experiment(cfg, quiet=True).metrics


def digits_demo(out: str) -> dict[str, float]:
    """``make demo``: BadNets on the bundled digits."""
    return _badnets_numbers(_run(EXAMPLES / "digits_badnets.yaml", [], out))


def digits_inference_defenses(out: str) -> dict[str, float]:
    """``examples/digits_inference_defenses.yaml``: STRIP and Neural Cleanse on digits."""
    return _badnets_numbers(_run(EXAMPLES / "digits_inference_defenses.yaml", [], out))


def matrix_digits(out: str) -> dict[str, float]:
    """``examples/matrix_digits.yaml``: 2 triggers x 5 defenses x 2 seeds, the table's means."""
    from poisonlab.matrix import load_grid, run_matrix

    outcome = run_matrix(load_grid(EXAMPLES / "matrix_digits.yaml", output_dir=out))
    nums: dict[str, float] = {}
    for r in outcome.rows:
        for key in ("clean_accuracy_mean", "attack_success_mean"):
            nums[f"{r['attack']}/{r['defense']}.{key}"] = r[key]
    return nums


ADULT_OVERRIDES = ["subpopulations.limit=5", "attack.alphas=[1.0, 2.0]", "workers=2", "data.train_limit=8000"]


def adult_sweep(out: str) -> dict[str, float]:
    """``examples/subpop_adult_defenses.yaml`` reduced: 8,000 training rows, 5 FeatureMatch
    subpopulations, alpha 1 and 2, every defense (needs ../shared/data)."""
    from poisonlab.subpop.config import load_subpop_config
    from poisonlab.subpop.experiment import run_subpop_experiment

    cfg = load_subpop_config(EXAMPLES / "subpop_adult_defenses.yaml",
                             [*ADULT_OVERRIDES, f"data.dir={DATA}", f"output.dir={out}", "output.plots=false"])
    _, m = run_subpop_experiment(cfg)
    nums: dict[str, float] = {"clean.accuracy": m["model"]["clean_accuracy"]}
    for r in m["rows"]:
        key = f"{r['subpop_id']}/alpha{r['alpha']:g}"
        nums[f"{key}.n_poison"] = r["n_poison"]
        for k, v in r.items():
            if k.endswith(("target", "collateral", "clean_accuracy", "poisons_removed", "clean_removed",
                           "certified_accuracy", "units_pruned")) and k != "seconds":
                nums[f"{key}.{k}"] = v
    for label, c in (m.get("certified") or {}).items():
        for r, acc in c["curve"]:
            nums[f"certified-curve/{label}/r{r}"] = acc
    return nums


EXPERIMENTS: dict[str, Callable[[str], dict[str, float]]] = {
    "digits_demo": digits_demo,
    "digits_inference_defenses": digits_inference_defenses,
    "matrix_digits": matrix_digits,
    "adult_sweep": adult_sweep,
}
NEEDS_SHARED_DATA = {"adult_sweep"}


def measure(name: str) -> dict[str, float]:
    """Run experiment ``name`` on :data:`THREADS` threads in a fresh run store; its numbers."""
    from poisonlab import progress

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    progress.set_enabled(False)
    try:
        with tempfile.TemporaryDirectory() as out:
            return EXPERIMENTS[name](out)
    finally:
        torch.set_num_threads(threads)
        progress.set_enabled(None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="write tests/golden/NAME.json")
    p.add_argument("names", nargs="*", default=list(EXPERIMENTS))
    args = p.parse_args(argv)
    for name in args.names:
        nums = measure(name)
        doc = {"experiment": name, "machine": machine(), "tolerance": TOLERANCE, "metrics": nums}
        text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=True)
        if args.write:
            (HERE / f"{name}.json").write_text(text + "\n")
        print(f"{name}: {len(nums)} numbers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
