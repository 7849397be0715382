"""The secml tutorial's toy case over many splits: gradient poisoning (Biggio et al. 2012) of an
RBF SVM (gamma 10, C 1) on two 2-D Gaussian blobs, 100 train / 100 validation / 100 test points
(disjoint), 20 poisons, beside 20 random label-flip copies. The tutorial reports 94% -> 88%.

    python examples/availability_blobs.py [--seeds 12] [--steps 10]

Prints per split the test accuracy clean / random flips / gradient poisons, then the means.
The test tests/test_availability_gradient.py asserts the >= 4 point drop on two of these splits
(1 and 7); this script gives the distribution over all of them."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from poisonlab.availability import GradientPoisoning  # noqa: E402
from poisonlab.availability.base import add_rows, other_labels  # noqa: E402
from poisonlab.data.base import Dataset  # noqa: E402
from poisonlab.pipeline.context import Reference  # noqa: E402


def split(seed: int) -> list[Dataset]:
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=300, centers=[[-1, -1], [1, 1]], cluster_std=0.9, random_state=seed)
    perm = np.random.default_rng(seed).permutation(300)
    low, high = x[perm[:100]].min(0), x[perm[:100]].max(0)
    x = (x - low) / (high - low)
    return [Dataset(torch.tensor(x[i], dtype=torch.float32), torch.tensor(y[i]), ["a", "b"])
            for i in (perm[:100], perm[100:200], perm[200:])]


def accuracy(train: Dataset, test: Dataset) -> float:
    from sklearn.svm import SVC

    svm = SVC(kernel="rbf", gamma=10, C=1).fit(train.x.double().numpy(), train.y.numpy())
    return float((svm.predict(test.x.double().numpy()) == test.y.numpy()).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| split | clean | random flips | gradient poisons | drop (points) | seconds |\n|---|---|---|---|---|---|")
    for seed in range(a.seeds):
        train, val, test = split(seed)
        start = time.perf_counter()
        attack = GradientPoisoning(rate=0.2, steps=a.steps,
                                   surrogate={"learner": "svm", "kernel": "rbf", "gamma": 10, "C": 1})
        poisoned = attack.poison(train, np.random.default_rng(seed), Reference(None, val, torch.device("cpu"), seed))
        seconds = time.perf_counter() - start
        rng = np.random.default_rng(seed)
        picked = torch.from_numpy(np.sort(rng.choice(100, size=20, replace=False)))
        flipped = add_rows(train, picked, train.x[picked], other_labels(train.y[picked], 2, rng)).dataset
        clean, flip, pois = accuracy(train, test), accuracy(flipped, test), accuracy(poisoned.dataset, test)
        rows.append((clean, flip, pois))
        print(f"| {seed} | {100 * clean:.0f}% | {100 * flip:.0f}% | {100 * pois:.0f}% | {100 * (clean - pois):+.0f} | "
              f"{seconds:.1f} |")
    c, f, p = (float(np.mean(v)) for v in zip(*rows))
    print(f"| mean | {100 * c:.1f}% | {100 * f:.1f}% | {100 * p:.1f}% | {100 * (c - p):+.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
