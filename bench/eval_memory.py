"""Peak memory of one evaluation pass against its batch size (issue 12).

Each batch size runs in a fresh process: the growth of ``ru_maxrss`` over one
:func:`poisonlab.train.predict_logits` of ``--rows`` random MNIST-shaped images through
``--model`` is what the batch's activations cost at their peak. The logits of every batch size
are compared with the first one's, bit for bit.

    python bench/eval_memory.py                       # badnet-mnist, 10,000 rows, 2048/1024/512
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

try:
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def one_pass(model_name: str, rows: int, batch: int, out: str) -> None:
    """Child process: one evaluation pass; prints the RSS growth in MiB, saves the logits."""
    import torch

    from poisonlab.models import build_model
    from poisonlab.train import predict_logits

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10)
    x = torch.rand(rows, 1, 28, 28)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logits = predict_logits(model, x, batch_size=batch)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    torch.save(logits, out)  # our own tensor, read back below with weights_only=True
    print(json.dumps({"batch": batch, "peak_growth_mib": grown}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="badnet-mnist")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--batches", type=int, nargs="+", default=[2048, 1024, 512])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("last_eval_memory.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        one_pass(a.model, a.rows, int(a.child[0]), a.child[1])
        return 0
    import tempfile

    import torch

    results, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for b in a.batches:
            out = str(Path(tmp) / f"{b}.pt")
            done = subprocess.run([sys.executable, __file__, "--model", a.model, "--rows", str(a.rows),
                                   "--child", str(b), out], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            logits = torch.load(out, weights_only=True)
            first = logits if first is None else first
            row["same_logits_as_first"] = bool(torch.equal(logits, first))
            results.append(row)
            print(f"batch {b:>5}: peak grew {row['peak_growth_mib']:.0f} MiB, "
                  f"logits identical to batch {a.batches[0]}: {row['same_logits_as_first']}")
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
