"""How the trainer's cost grows (issue 12): one epoch of ``train_model`` against the number of
training rows (BadNets MNIST CNN, 10k-60k real MNIST rows) and against model width (the GTSRB
``small-cnn``, one conv per block, widths 8-64, on 32x32 colour images), in one run.

Each point is the best of ``--repeats`` epochs (after a warm-up epoch per model). The rows
series is fitted by least squares ``seconds = a + b * rows``; the JSON and the table give the
fit and each point's deviation from it, the plot shows both series.

    python bench/scaling.py --data-dir ../shared/data          # about 2 min on 2 cores
    python bench/scaling.py --quick                            # tiny sizes, a smoke run
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

from poisonlab import progress, report  # noqa: E402
from poisonlab.data.base import Dataset  # noqa: E402
from poisonlab.models import build_model  # noqa: E402
from poisonlab.train import TrainConfig, seed_everything, train_model  # noqa: E402


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, list[float]]:
    """Least-squares ``y = a + b x``: ``(a, b, relative deviation of each point from the fit)``.

    >>> a, b, dev = linear_fit([1, 2, 3], [2.0, 4.0, 6.0])
    >>> round(a, 9), round(b, 9), [round(d, 9) for d in dev]
    (0.0, 2.0, [0.0, 0.0, 0.0])
    """
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b), [float(y / (a + b * x) - 1) for x, y in zip(xs, ys)]


def epoch_seconds(model_name: str, shape: tuple[int, ...], classes: int, options: dict[str, Any], data: Dataset,
                  batch_size: int, repeats: int) -> float:
    """Best wall time of one ``train_model`` epoch over ``repeats`` (a fresh model each time)."""
    best = float("inf")
    for _ in range(repeats):
        seed_everything(0)
        model = build_model(model_name, shape, classes, options)
        start = time.perf_counter()
        train_model(model, data, TrainConfig(epochs=1, batch_size=batch_size, lr=0.05), seed=0)
        best = min(best, time.perf_counter() - start)
    return best


def mnist_rows(data_dir: str, n: int, quick: bool) -> tuple[Dataset, str]:
    if not quick:
        try:
            from poisonlab.data.base import load_dataset

            train = load_dataset("mnist", data_dir).train
            return train.subset(torch.arange(min(n, len(train)))), f"MNIST from {data_dir}"
        except Exception as exc:  # noqa: BLE001 - the bench falls back to random data and says so
            print(f"NOTE: MNIST not loaded ({exc}); random images instead")
    g = torch.Generator().manual_seed(0)
    return Dataset((torch.rand(n, 1, 28, 28, generator=g) > 0.8).float(), torch.randint(0, 10, (n,), generator=g),
                   [str(i) for i in range(10)]), "random MNIST-shaped images"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=str(Path(__file__).with_name("last_scaling.json")))
    p.add_argument("--plot", default=str(Path(__file__).with_name("last_scaling.png")))
    a = p.parse_args(argv)
    progress.set_enabled(False)
    sizes = [1000, 2000, 4000] if a.quick else [10_000, 20_000, 40_000, 60_000]
    widths = [8, 16] if a.quick else [8, 16, 32, 64]
    data, note = mnist_rows(a.data_dir, max(sizes), a.quick)
    epoch_seconds("badnet-mnist", (1, 28, 28), 10, {}, data.subset(torch.arange(sizes[0])), 256, 1)  # warm-up
    rows = [{"rows": n, "seconds": epoch_seconds("badnet-mnist", (1, 28, 28), 10, {},
                                                 data.subset(torch.arange(n)), 256, a.repeats)} for n in sizes]
    fit_a, fit_b, dev = linear_fit([r["rows"] for r in rows], [r["seconds"] for r in rows])
    for r, d in zip(rows, dev):
        r.update(images_per_second=r["rows"] / r["seconds"], deviation_from_fit=d)
    g = torch.Generator().manual_seed(1)
    n_img = 1024 if a.quick else 4096
    colour = Dataset(torch.rand(n_img, 3, 32, 32, generator=g), torch.randint(0, 43, (n_img,), generator=g),
                     [str(i) for i in range(43)])
    wide = []
    for w in widths:
        opts = {"convs_per_block": 1, "width": w}
        epoch_seconds("small-cnn", (3, 32, 32), 43, opts, colour.subset(torch.arange(256)), 128, 1)  # warm-up
        s = epoch_seconds("small-cnn", (3, 32, 32), 43, opts, colour, 128, a.repeats)
        wide.append({"width": w, "rows": n_img, "seconds": s, "images_per_second": n_img / s})
    out = {"data": note, "threads": torch.get_num_threads(), "rows_series": rows,
           "rows_fit": {"intercept_seconds": fit_a, "seconds_per_row": fit_b}, "width_series": wide}
    print(f"badnet-mnist, one epoch, batch 256 ({note}); fit: {fit_a:.2f} s + {fit_b * 1e6:.1f} us/row")
    for r in rows:
        print(f"  {r['rows']:>6,} rows  {r['seconds']:6.2f} s  {r['images_per_second']:8,.0f} img/s  "
              f"{r['deviation_from_fit']:+.1%} from the fit")
    print(f"small-cnn (one conv per block), one epoch of {n_img:,} random 32x32 images, batch 128")
    for r in wide:
        print(f"  width {r['width']:>3}  {r['seconds']:6.2f} s  {r['images_per_second']:8,.0f} img/s")
    if a.json != "-":
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    if a.plot != "-":
        plt = report.pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        ax1.plot([r["rows"] for r in rows], [r["seconds"] for r in rows], "o-", label="measured")
        xs = np.array([0, max(sizes)])
        ax1.plot(xs, fit_a + fit_b * xs, ":", color="grey", label="linear fit")
        ax1.set_xlabel("training rows (badnet-mnist)")
        ax1.set_ylabel("seconds per epoch")
        ax1.legend(fontsize=8)
        ax2.plot([r["width"] for r in wide], [r["seconds"] for r in wide], "o-")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel(f"small-cnn width ({n_img:,} images)")
        ax2.set_ylabel("seconds per epoch")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=100)
        plt.close(fig)
    return out


if __name__ == "__main__":
    main()
