"""Why a filtering defense misses: the target class's representations of a saved BadNet run.

Rebuilds the run's poisoned training set from its config (the attack is seeded), loads the
BadNet's weights, takes the representations of the rows labelled with the attack's target
(the input of the last linear layer, as Spectral Signatures, Tran et al. 2018, and Activation
Clustering, Chen et al. 2018, read them), and prints where poisons and clean rows fall on the
top singular direction of the centred class, and how many poisons the squared projection
(the Spectral Signatures score) ranks first.

    python examples/spectral_projection.py runs/<mnist-filtering-defenses run> --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from poisonlab.attacks import build_attack
from poisonlab.config import load_config
from poisonlab.data import load_dataset
from poisonlab.data.splits import carve_validation, limit_rows
from poisonlab.defenses.filtering import representations
from poisonlab.models import build_model
from poisonlab.store import load_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder of a BadNets run with a single-target attack")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    cfg = load_config(args.run / "config.yaml", [f"data.dir={args.data_dir}"] if args.data_dir else [])
    if not cfg.attack or cfg.attack.get("labels", "single-target") != "single-target":
        raise SystemExit(f"error: {args.run} is not a run of a single-target BadNets attack")
    if not (args.run / "weights" / "badnet.safetensors").is_file():
        raise SystemExit(f"error: {args.run} has no weights/badnet.safetensors (run with output.save_weights: true)")
    split = load_dataset(cfg.data.name, cfg.data.dir, cfg.data.download)
    train, _ = carve_validation(limit_rows(split.train, cfg.data.train_limit, cfg.seed), cfg.data.val_fraction, cfg.seed)
    attack = build_attack(cfg.attack)
    poison = attack.poison(train, np.random.default_rng([cfg.seed, 0xBAD]))  # as run_experiment draws it
    model = build_model(cfg.model.name, tuple(train.x.shape[1:]), train.num_classes, cfg.model.options)
    load_weights(model, args.run / "weights" / "badnet.safetensors")
    target = int(cfg.attack["target"])
    rows = np.flatnonzero(poison.dataset.y.numpy() == target)
    is_poison = poison.poison_mask.numpy()[rows]
    reps = representations(model.eval(), poison.dataset.x[rows], "auto")
    centred = reps - reps.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ direction
    top = np.argsort(-proj ** 2, kind="stable")[:int(is_poison.sum())]
    print(f"class {target}: {len(rows)} rows, {int(is_poison.sum())} poisons ({is_poison.mean():.1%})")
    print(f"projection on the top singular direction: poisons mean {proj[is_poison].mean():+.2f}, "
          f"clean mean {proj[~is_poison].mean():+.2f}")
    print(f"share of poisons among the {len(top)} rows with the largest squared projection: {is_poison[top].mean():.1%}")


if __name__ == "__main__":
    from poisonlab.errors import PoisonlabError

    try:
        main()
    except PoisonlabError as exc:
        raise SystemExit(f"error: {exc}") from None
