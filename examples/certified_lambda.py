"""How the certified defense's ridge penalty in subpop_adult_defenses.yaml was picked: on the
clean validation split only (Rosenfeld et al., ICML 2020, certified robustness to label flipping).

Rebuilds the experiment's victim rows D and validation split from the config (the splits are
seeded), fits the label-noise-smoothed ridge classifier on D for each candidate ``lam``, and
prints its validation accuracy and its certified accuracy on the validation rows at a few
numbers of flipped training labels. No test row is read.

    python examples/certified_lambda.py examples/subpop_adult_defenses.yaml --data-dir ../shared/data
"""
from __future__ import annotations

import argparse


from poisonlab.data import load_dataset
from poisonlab.data.splits import limit_rows
from poisonlab.defenses.certified import SmoothedRidge, curve_from_radii
from poisonlab.subpop.config import load_subpop_config
from poisonlab.subpop.threat import attacker_split, validation_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a subpop config with data.val_fraction > 0 and a certified defense")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--lams", default="1,10,100", help="candidate ridge penalties, comma-separated")
    ap.add_argument("--flips", default="0,25,50,100", help="numbers of flipped labels to certify against")
    args = ap.parse_args()
    cfg = load_subpop_config(args.config, [f"data.dir={args.data_dir}"] if args.data_dir else [])
    if cfg.data.val_fraction <= 0:
        raise SystemExit(f"error: {args.config} has data.val_fraction 0; the choice needs a validation split")
    q = next((d.params["q"] for d in cfg.defense_specs() if d.name == "certified"), 0.1)
    split = load_dataset(cfg.data.name, cfg.data.dir, cfg.data.download)
    train = limit_rows(split.train, cfg.data.train_limit, cfg.seed)
    victim_idx, _ = attacker_split(len(train), cfg.data.attacker_fraction, cfg.seed, train.y)
    keep_idx, val_idx = validation_split(len(victim_idx), cfg.data.val_fraction, cfg.seed, train.y[victim_idx])
    d, val = train.subset(victim_idx[keep_idx]), train.subset(victim_idx[val_idx])
    x_d, x_val, y_val = (d.x.reshape(len(d), -1).double().numpy(), val.x.reshape(len(val), -1).double().numpy(),
                         val.y.numpy())
    flips = [int(f) for f in args.flips.split(",")]
    print(f"q = {q}; D: {len(d)} rows; validation: {len(val)} rows")
    for lam in (float(v) for v in args.lams.split(",")):
        model = SmoothedRidge(q, lam).fit(x_d, d.y.numpy())
        accuracy = float((model.predict(x_val) == y_val).mean())
        labels, radii = model.radii(x_val, max(flips))
        curve = dict(curve_from_radii(labels == y_val, radii, max(flips)))
        print(f"lam {lam:g}: validation accuracy {accuracy:.4f}; certified accuracy "
              + ", ".join(f"r={r}: {curve[r]:.4f}" for r in flips))


if __name__ == "__main__":
    from poisonlab.errors import PoisonlabError

    try:
        main()
    except PoisonlabError as exc:
        raise SystemExit(f"error: {exc}") from None
