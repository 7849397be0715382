"""Filtering defenses on the MNIST BadNets set, timed side by side with IBM ART in one run (issue 12).

The set: the 60,000 MNIST training images plus 10% BadNets poisons (the 3x3 pattern at the
bottom right, every digit but 7 relabelled 7): 66,000 rows. A victim (``badnet-mnist``) is
trained on it for ``--epochs``; the defender's clean validation split is 6,000 clean rows drawn
from the MNIST training images (for this timing bench they are also training rows). Then, on the
victim's 512-d penultimate activations:

* activations: :func:`poisonlab.defenses.filtering.representations` of the 66,000 rows and
  of the validation rows (what every filtering defense of a run shares);
* poisonlab Spectral Signatures (budget rule, epsilon 0.1; validation rule) and Activation
  Clustering (PCA and FastICA, validation rule; FastICA, size rule);
* ART 1.20.1 ``SpectralSignatureDefense`` (expected_pp_poison 0.1, eps_multiplier 1.5) and
  ``ActivationDefence`` (PCA, FastICA; 10 dims, 2 clusters, "smaller" analysis) **on the same
  activations** (ART's own activation pass is replaced by the precomputed array).

Each defense runs ``--repeats`` times, interleaved; the best time is reported with the recall
and false-positive rate of its removal against the known poison mask.

    python bench/filter_speed.py --data-dir ../shared/data          # about 2-3 min on 2 cores
    python bench/filter_speed.py --quick                            # random data, a smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

try:
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from poisonlab import progress  # noqa: E402
from poisonlab.attacks import BadNets  # noqa: E402
from poisonlab.data.base import Dataset  # noqa: E402
from poisonlab.defenses.activation_clustering import activation_clustering  # noqa: E402
from poisonlab.defenses.filtering import representations  # noqa: E402
from poisonlab.defenses.spectral import spectral_signatures  # noqa: E402
from poisonlab.models import build_model  # noqa: E402
from poisonlab.train import TrainConfig, seed_everything, train_model  # noqa: E402

TARGET_SECONDS = 3.0


def removal_quality(remove: np.ndarray, poison: np.ndarray) -> dict[str, float]:
    """Recall (poisons removed / poisons) and false-positive rate (clean removed / clean).

    >>> removal_quality(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    {'recall': 0.5, 'fpr': 0.5}
    """
    return {"recall": float(remove[poison].mean()), "fpr": float(remove[~poison].mean())}


def art_mask(is_clean: list[int]) -> np.ndarray:
    """ART's ``is_clean_lst`` (1 = kept) as a removal mask."""
    return np.asarray(is_clean) == 0


def load_set(data_dir: str, quick: bool, seed: int) -> tuple[Dataset, np.ndarray, Dataset, str]:
    """(poisoned training set, its poison mask, clean validation rows, where the data came from)."""
    if quick:
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(3000, 1, 28, 28, generator=g) > 0.8).float()
        train, note = Dataset(x, torch.randint(0, 10, (3000,), generator=g), [str(i) for i in range(10)]), "random"
    else:
        from poisonlab.data.base import load_dataset

        train, note = load_dataset("mnist", data_dir).train, f"MNIST from {data_dir}"
    poisoned = BadNets(p=0.1, target=7).poison(train, np.random.default_rng([seed, 0xBAD]))
    val_rows = np.random.default_rng(seed).choice(len(train), len(train) // 10, replace=False)
    return poisoned.dataset, poisoned.poison_mask.numpy(), train.subset(torch.from_numpy(np.sort(val_rows))), note


def art_defenses(model: torch.nn.Module, data: Dataset, reprs: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """ART's two defenses on ``reprs`` (its activation pass replaced); empty without ART."""
    try:
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return {}
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0))
    clf.get_activations = lambda *a, **k: reprs  # the same activations as poisonlab's
    x, y = data.x.numpy(), np.eye(10, dtype=np.float32)[data.y.numpy()]

    def ss() -> np.ndarray:
        return art_mask(SpectralSignatureDefense(clf, x, y, expected_pp_poison=0.1, eps_multiplier=1.5)
                        .detect_poison()[1])

    def ac(reduce: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            d = ActivationDefence(clf, x, y)
            d._get_activations = lambda x_train=None: reprs
            return art_mask(d.detect_poison(nb_clusters=2, nb_dims=10, reduce=reduce, cluster_analysis="smaller")[1])
        return run

    return {"art spectral-signatures": ss, "art activation-clustering pca": ac("PCA"),
            "art activation-clustering ica": ac("FastICA")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--epochs", type=int, default=3, help="victim training epochs (lr 0.1, cosine, batch 256)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).with_name("last_filter_speed.json")))
    a = p.parse_args(argv)
    progress.set_enabled(False)
    torch.set_num_threads(torch.get_num_threads())
    data, poison, val, note = load_set(a.data_dir, a.quick, a.seed)
    seed_everything(a.seed)
    model = build_model("badnet-mnist", (1, 28, 28), 10)
    start = time.perf_counter()
    train_model(model, data, TrainConfig(epochs=1 if a.quick else a.epochs, batch_size=256, lr=0.1), seed=a.seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    reprs, vreprs = representations(model, data.x), representations(model, val.x)
    act_s = time.perf_counter() - start
    y, yv = data.y.numpy(), val.y.numpy()
    runs: dict[str, Callable[[], np.ndarray]] = {
        "spectral-signatures budget": lambda: spectral_signatures(reprs, y, epsilon=0.1).remove,
        "spectral-signatures validation": lambda: spectral_signatures(reprs, y, rule="validation", val_reprs=vreprs,
                                                                      val_labels=yv).remove,
        "activation-clustering pca validation": lambda: activation_clustering(
            reprs, y, reduce="pca", rule="validation", val_reprs=vreprs, val_labels=yv).remove,
        "activation-clustering ica validation": lambda: activation_clustering(
            reprs, y, reduce="ica", rule="validation", val_reprs=vreprs, val_labels=yv).remove,
        "activation-clustering ica size": lambda: activation_clustering(reprs, y, reduce="ica").remove,
        **art_defenses(model, data, reprs)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    quality: dict[str, dict[str, float]] = {}
    for r in range(a.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            remove = runs[name]()
            times[name].append(time.perf_counter() - t)
            quality[name] = removal_quality(remove, poison)
    out = {"data": note, "rows": len(data), "poisons": int(poison.sum()), "validation_rows": len(val),
           "epochs": a.epochs, "train_seconds": train_s, "activations_seconds": act_s,
           "threads": torch.get_num_threads(), "target_seconds": TARGET_SECONDS,
           "defenses": {k: {"best_seconds": min(v), "seconds": v, **quality[k]} for k, v in times.items()}}
    print(f"{note}: {len(data):,} rows ({int(poison.sum()):,} poisons), victim trained {a.epochs} epochs in "
          f"{train_s:.1f} s; activations of {len(data):,} + {len(val):,} rows {act_s:.2f} s "
          f"(target <= {TARGET_SECONDS:g} s)")
    for k, v in out["defenses"].items():
        print(f"  {k:<40} {v['best_seconds']:6.2f} s   recall {v['recall']:.4f}   fpr {v['fpr']:.4f}")
    if a.json != "-":
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with bad input (a missing data folder, a bad option) as one line and exit 2."""
    from poisonlab.errors import PoisonlabError

    try:
        main(argv)
    except PoisonlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
