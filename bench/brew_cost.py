"""What targeted poisons cost (issue 13): seconds per poison image for gradient matching (Witches'
Brew) and feature collision (Poison Frogs) with the committed examples' recipes, and the images/s
of the victims' retraining, in one run.

* gradient matching: ``badnet-mnist`` (random weights: the cost does not depend on them), 180
  poison images (1% of 18,000 rows), one target, ``--steps`` signed-Adam steps (250, the
  example's), one restart;
* feature collision: ``small-cnn`` (width 16, one conv per block) on 32x32 colour images, 20
  poisons, ``--iterations`` (1,500, the example's);
* victims: one epoch of ``badnet-mnist`` trained from scratch on 18,000 images (batch 256),
  and of ``small-cnn`` with only its last layer trained (``victim.trainable: last``) on 9,000
  images (batch 128).

Images are uniform random pixels (the arithmetic is the same as on real images).

    python bench/brew_cost.py                 # about 1 min on 2 cores
    python bench/brew_cost.py --quick         # a smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from poisonlab import progress  # noqa: E402
from poisonlab.data.base import Dataset  # noqa: E402
from poisonlab.models import build_model  # noqa: E402
from poisonlab.pipeline.victim_fit import LastLayerOnly, last_linear  # noqa: E402
from poisonlab.targeted.feature_collision import collide  # noqa: E402
from poisonlab.targeted.features import feature_map, resolve_feature_layer  # noqa: E402
from poisonlab.targeted.gradient_matching import brew  # noqa: E402
from poisonlab.train import TrainConfig, train_model  # noqa: E402

SMALL = {"convs_per_block": 1, "width": 16}


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--quick", action="store_true", help="few steps and rows: a smoke run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("last_brew_cost.json"))
    a = ap.parse_args(argv)
    steps, iterations = (3, 5) if a.quick else (a.steps, a.iterations)
    rows_mnist, rows_cifar, poisons_gm, poisons_fc = (600, 300, 12, 4) if a.quick else (18_000, 9_000, 180, 20)
    torch.manual_seed(0)
    progress.set_enabled(False)
    mnist = build_model("badnet-mnist", (1, 28, 28), 10)
    base = torch.rand(poisons_gm, 1, 28, 28)
    gm_s, _ = timed(lambda: brew(mnist, base, torch.full((poisons_gm,), 3), torch.rand(1, 1, 28, 28), 3, 16 / 255,
                                 steps, 1, 0.1, 512, 0, np.random.default_rng(0)))
    cnn = build_model("small-cnn", (3, 32, 32), 10, SMALL)
    features = feature_map(cnn, resolve_feature_layer(cnn, "auto"))
    with torch.no_grad():
        target_feat = features(torch.rand(poisons_fc, 3, 32, 32))
    fc_s, _ = timed(lambda: collide(features, target_feat, torch.rand(poisons_fc, 3, 32, 32), 0.0014, iterations, 0.01,
                                    0.5, tolerance=0.0))
    scratch = Dataset(torch.rand(rows_mnist, 1, 28, 28), torch.randint(0, 10, (rows_mnist,)), [str(i) for i in range(10)])
    victim_s, _ = timed(lambda: train_model(build_model("badnet-mnist", (1, 28, 28), 10), scratch,
                                            TrainConfig(epochs=1, batch_size=256, lr=0.1)))
    transfer = Dataset(torch.rand(rows_cifar, 3, 32, 32), torch.randint(0, 10, (rows_cifar,)), [str(i) for i in range(10)])
    frozen = LastLayerOnly(cnn, last_linear(cnn))
    last_s, _ = timed(lambda: train_model(frozen, transfer, TrainConfig(epochs=1, batch_size=128, optimizer="adam",
                                                                         lr=0.002)))
    frozen.release()
    # the same last layer on features computed once (fit_learner's path for train.trainable: last),
    # 3 epochs each way so that the one-off feature pass counts against the cached path
    from poisonlab.models.freeze import fit_last_layer

    cfg3 = TrainConfig(epochs=3, batch_size=128, optimizer="adam", lr=0.002, trainable="last")
    frozen = LastLayerOnly(cnn, last_linear(cnn))
    full3_s, _ = timed(lambda: train_model(frozen, transfer, cfg3))
    frozen.release()
    cached3_s, _ = timed(lambda: fit_last_layer(cnn, transfer, cfg3, 0, "cpu", None, "cached"))
    out = {"threads": torch.get_num_threads(), "quick": a.quick,
           "gradient_matching": {"model": "badnet-mnist", "poisons": poisons_gm, "steps": steps, "seconds": gm_s,
                                 "seconds_per_poison_image": gm_s / poisons_gm},
           "feature_collision": {"model": "small-cnn width 16", "poisons": poisons_fc, "iterations": iterations,
                                 "seconds": fc_s, "seconds_per_poison_image": fc_s / poisons_fc},
           "victim_from_scratch": {"model": "badnet-mnist", "rows": rows_mnist, "images_per_second": rows_mnist / victim_s},
           "victim_last_layer": {"model": "small-cnn width 16", "rows": rows_cifar, "images_per_second": rows_cifar / last_s},
           "victim_last_layer_3_epochs": {"through_frozen_layers_seconds": full3_s, "cached_features_seconds": cached3_s,
                                          "speedup": full3_s / cached3_s}}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"gradient matching: {gm_s:.1f} s for {poisons_gm} poisons x {steps} steps = "
          f"{gm_s / poisons_gm:.3f} s per poison image")
    print(f"feature collision: {fc_s:.1f} s for {poisons_fc} poisons x {iterations} iterations = "
          f"{fc_s / poisons_fc:.3f} s per poison image")
    print(f"victim from scratch: {rows_mnist / victim_s:,.0f} images/s; last layer only: {rows_cifar / last_s:,.0f} images/s")
    print(f"last layer, 3 epochs: {full3_s:.2f} s through the frozen layers, {cached3_s:.2f} s on features computed "
          f"once ({full3_s / cached3_s:.1f}x)")
    return out


if __name__ == "__main__":
    main()
