"""Training throughput of the BadNets MNIST CNN on CPU, measured three ways in one run.

  (1) poisonlab's in-memory trainer, ``poisonlab.train.train_model`` (1 epoch per repeat);
  (2) the usual per-sample pipeline: a map-style ``torch.utils.data.Dataset`` whose
      ``__getitem__`` turns one uint8 28x28 image into a float tensor / 255 (what
      torchvision's ``ToTensor`` does), ``DataLoader(shuffle=True, num_workers=0)`` with the
      default collate, and the same model / optimiser / loss in a plain loop (NCHW);
  (3) a roofline: the machine's dense float32 matmul rate (GFLOP/s, best of several)
      divided by the model's training FLOPs per image (3x the forward multiply-adds x 2).

Every pipeline is warmed up first; repeats of (1), (2) and the matmul probe are
interleaved (the order of (1) and (2) alternates) so that load from other processes hits
all of them alike; the best repeat is the headline (like the best-of matmul rate), the
median is reported beside it. See bench/README.md.

    python bench/throughput.py --data-dir ../shared/data            # full run, ~35 s on 2 cores
    python bench/throughput.py --quick                              # CI smoke, < 30 s
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:  # `make bench` runs with the package installed; a plain checkout needs src/ on the path
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the bench is started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from poisonlab import progress  # noqa: E402
from poisonlab.data.base import Dataset as PLDataset  # noqa: E402
from poisonlab.models import build_model  # noqa: E402
from poisonlab.train import TrainConfig, seed_everything, train_model  # noqa: E402

MODEL = "badnet-mnist"
SHAPE = (1, 28, 28)
NUM_CLASSES = 10
TARGET_VS_DATALOADER = 2.5   # (1) / (2)
TARGET_VS_ROOFLINE = 0.40    # (1) / roofline
TRAIN_FLOPS_FACTOR = 3       # training FLOPs = 3 x forward FLOPs (forward, grad wrt input, grad wrt weights)
# the batch size the project uses for this model on CPU (examples/mnist_badnets_*.yaml: train.batch_size 256)
RECOMMENDED_BATCH_SIZE = 256


# ----------------------------------------------------------------- pure helpers (tested)


def parse_idx(raw: bytes) -> np.ndarray:
    """The uint8 array of an (uncompressed) IDX file: magic 0x0000080N, N big-endian dims, data.

    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
    [7, 9]
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    header = 4 + 4 * ndim
    if len(raw) != header + int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"IDX size mismatch: header says {dims}, {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def count_forward_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-adds per image of every Conv2d / Linear in one forward pass (hooks; biases ignored).

    Conv2d: output elements x (in_channels / groups) x kernel area; Linear: in x out per row.

    >>> count_forward_macs(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), (4,))
    {'1': 12}
    """
    macs: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            per_out = (module.in_channels // module.groups) * kernel
            macs[names[module]] = output[0].numel() * per_out
        elif isinstance(module, nn.Linear):
            macs[names[module]] = (output[0].numel() // module.out_features) * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def training_flops_per_image(forward_macs: int) -> int:
    """Training FLOPs per image: 2 FLOPs per multiply-add, x3 for forward + two backward GEMMs.

    >>> training_flops_per_image(1000)
    6000
    """
    return 2 * forward_macs * TRAIN_FLOPS_FACTOR


def roofline_images_per_second(gflops: float, flops_per_image: float) -> float:
    """Images/s a machine doing ``gflops`` GFLOP/s would reach if training ran at matmul speed.

    >>> roofline_images_per_second(100.0, 5e6)
    20000.0
    """
    return gflops * 1e9 / flops_per_image


def verdict(value: float, target: float) -> str:
    """``PASS`` when ``value >= target``, else ``MISS``.

    >>> verdict(2.6, 2.5), verdict(0.39, 0.4)
    ('PASS', 'MISS')
    """
    return "PASS" if value >= target else "MISS"


def summarize(samples: list[float]) -> dict[str, float]:
    """Best, median and worst of repeated rate measurements (higher is better).

    >>> summarize([3.0, 1.0, 2.0])
    {'best': 3.0, 'median': 2.0, 'worst': 1.0, 'samples': [3.0, 1.0, 2.0]}
    """
    return {"best": max(samples), "median": statistics.median(samples), "worst": min(samples),
            "samples": list(samples)}


# ----------------------------------------------------------------- machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def cpu_snapshot() -> tuple[float, float, float, float] | None:
    """(wall s, system-wide busy CPU s, steal CPU s, this process's CPU s), Linux only."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    steal = fields[7] if len(fields) > 7 else 0.0
    busy = sum(fields[:8]) - idle - steal
    t = os.times()
    return time.perf_counter(), busy / hz, steal / hz, t.user + t.system


def others_cpu_share(before: tuple | None, after: tuple | None, ncpu: int) -> dict[str, float] | None:
    """Share of the machine's CPU time that *other* processes (busy) and the hypervisor (steal) took.

    >>> others_cpu_share((0.0, 0.0, 0.0, 0.0), (10.0, 12.0, 1.0, 10.0), 2)
    {'others': 0.1, 'steal': 0.05}
    """
    if before is None or after is None:
        return None
    wall = after[0] - before[0]
    if wall <= 0:
        return None
    others = max(0.0, (after[1] - before[1]) - (after[3] - before[3]))
    return {"others": round(others / (wall * ncpu), 4), "steal": round((after[2] - before[2]) / (wall * ncpu), 4)}


# ----------------------------------------------------------------- data


def _read_idx_gz(folder: Path, base: str) -> np.ndarray:
    raw_path, gz_path = folder / base, folder / f"{base}.gz"
    if raw_path.exists():
        return parse_idx(raw_path.read_bytes())
    return parse_idx(gzip.decompress(gz_path.read_bytes()))


def load_mnist_uint8(data_dir: str | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` MNIST training images as uint8 (n, 28, 28), labels int64, and where they came from.

    Tries poisonlab's loader, then a direct IDX read, then falls back to random images.
    """
    notes = []
    if data_dir is not None:
        try:
            from poisonlab.data import load_dataset

            train = load_dataset("mnist", data_dir).train
            x = train.x[:n].mul(255).round_().to(torch.uint8).squeeze(1).numpy()
            return x, train.y[:n].numpy(), f"MNIST via poisonlab.data.load_dataset('mnist', {data_dir!r})"
        except Exception as e:  # noqa: BLE001 - any failure falls through to the next source
            notes.append(f"poisonlab loader: {type(e).__name__}: {str(e)[:120]}")
        for folder in (Path(data_dir) / "mnist", Path(data_dir) / "MNIST" / "raw", Path(data_dir)):
            try:
                x = _read_idx_gz(folder, "train-images-idx3-ubyte")[:n]
                y = _read_idx_gz(folder, "train-labels-idx1-ubyte")[:n].astype(np.int64)
                return np.ascontiguousarray(x), y, f"MNIST IDX files in {folder}"
            except (OSError, ValueError):
                continue
    rng = np.random.default_rng(seed)
    # MNIST-like sparsity: ~80 % zeros, the rest uniform, so compute matches real digits
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[rng.random((n, 28, 28)) < 0.8] = 0
    y = rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    why = "; ".join(notes) or "no --data-dir"
    print(f"NOTE: MNIST files not found ({why}); using RANDOM uint8 images of MNIST shape.", flush=True)
    return x, y, "random uint8 images of MNIST shape (MNIST not found)"


class PerSampleMNIST(torch.utils.data.Dataset):
    """The usual map-style data set: one uint8 image -> float tensor (1, 28, 28) / 255, int label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.images[i])                       # uint8 (28, 28), like np.array(PIL image)
        x = img.view(1, 28, 28).to(torch.float32).div(255)          # what ToTensor does for a grey image
        return x, int(self.labels[i])


# ----------------------------------------------------------------- the three measurements


def fresh_model(seed: int) -> nn.Module:
    seed_everything(seed)
    return build_model(MODEL, SHAPE, NUM_CLASSES)


def run_poisonlab(train: PLDataset, cfg: TrainConfig, seed: int) -> float:
    """Images/s of one ``train_model`` epoch (wall time around the call)."""
    model = fresh_model(seed)
    t0 = time.perf_counter()
    train_model(model, train, cfg, seed=seed)
    return len(train) * cfg.epochs / (time.perf_counter() - t0)


def run_dataloader(ds: PerSampleMNIST, cfg: TrainConfig, seed: int) -> float:
    """Images/s of one epoch of the plain DataLoader loop (same model, optimiser, loss)."""
    model = fresh_model(seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0, generator=gen)
    t0 = time.perf_counter()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(ds) / (time.perf_counter() - t0)


def matmul_gflops(size: int, tries: int) -> float:
    """Best float32 ``torch.matmul`` rate on ``size`` x ``size`` matrices, in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warm-up
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


# ----------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/ (IDX .gz files)")
    p.add_argument("--images", type=int, default=None, help="training images per timed epoch (default 32768; quick 1024)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per pipeline (default 5; quick 1)")
    p.add_argument("--batch-size", type=int, default=RECOMMENDED_BATCH_SIZE,
                   help=f"batch size for both pipelines (default {RECOMMENDED_BATCH_SIZE}, as in the MNIST examples)")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul side for the roofline (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that finishes in < 30 s")
    p.add_argument("--json", default=str(Path(__file__).with_name("last_throughput.json")),
                   help="where to write the results as JSON ('' or '-' to skip writing)")
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images if args.images is not None else (1024 if q else 32768)
    args.repeats = args.repeats if args.repeats is not None else (1 if q else 5)
    args.matmul_size = args.matmul_size if args.matmul_size is not None else (1024 if q else 2048)
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1 or args.matmul_size < 16:
        p.error("--images, --repeats, --batch-size must be >= 1 and --matmul-size >= 16")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress.set_enabled(False)  # a live progress bar would steal CPU from the timed loops
    load_before = load_average()
    snap_before = cpu_snapshot()
    t_start = time.perf_counter()

    warm_n = min(args.images, max(4 * args.batch_size, 1024 if not args.quick else 256))
    images, labels, source = load_mnist_uint8(args.data_dir, args.images + warm_n, args.seed)
    if len(labels) < args.images + warm_n:
        raise SystemExit(f"only {len(labels)} images available; lower --images")
    x_float = torch.from_numpy(images).to(torch.float32).div_(255).unsqueeze(1)  # exactly what the loader yields
    y_long = torch.from_numpy(labels)
    pl_train = PLDataset(x_float[:args.images], y_long[:args.images], [str(i) for i in range(NUM_CLASSES)])
    pl_warm = PLDataset(x_float[args.images:], y_long[args.images:], [str(i) for i in range(NUM_CLASSES)])
    ds_train = PerSampleMNIST(images[:args.images], labels[:args.images])
    ds_warm = PerSampleMNIST(images[args.images:], labels[args.images:])
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size)

    macs = count_forward_macs(fresh_model(args.seed), SHAPE)
    fwd_macs = sum(macs.values())
    flops_img = training_flops_per_image(fwd_macs)

    print(f"data: {source}; {args.images} timed images/epoch, {warm_n} warm-up images, "
          f"batch {args.batch_size}, {args.repeats} repeat(s), {torch.get_num_threads()} thread(s)", flush=True)
    # warm-up: allocator, oneDNN primitive caches, the matmul kernels
    run_poisonlab(pl_warm, cfg, args.seed)
    run_dataloader(ds_warm, cfg, args.seed)
    matmul_gflops(args.matmul_size, 1)

    pl_rates: list[float] = []
    dl_rates: list[float] = []
    mm_rates: list[float] = []
    mm_tries = 3 if args.quick else 5
    for r in range(args.repeats):
        order = ("pl", "dl") if r % 2 == 0 else ("dl", "pl")
        for which in order:
            if which == "pl":
                pl_rates.append(run_poisonlab(pl_train, cfg, args.seed))
            else:
                dl_rates.append(run_dataloader(ds_train, cfg, args.seed))
        mm_rates.append(matmul_gflops(args.matmul_size, mm_tries))
        print(f"  repeat {r + 1}/{args.repeats}: poisonlab {pl_rates[-1]:,.0f} img/s, "
              f"DataLoader {dl_rates[-1]:,.0f} img/s, matmul {mm_rates[-1]:,.1f} GFLOP/s", flush=True)

    pl, dl = summarize(pl_rates), summarize(dl_rates)
    gflops = max(mm_rates)
    roof = roofline_images_per_second(gflops, flops_img)
    ratio_dl = pl["best"] / dl["best"]
    ratio_roof = pl["best"] / roof
    # even a trainer running at the roofline could not beat the DataLoader loop by more than this
    max_ratio_dl = roof / dl["best"]
    load_after = load_average()
    contention = others_cpu_share(snap_before, cpu_snapshot(), os.cpu_count() or 1)
    result = {
        "model": MODEL,
        "data": source,
        "images_per_epoch": args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "quick": args.quick,
        "poisonlab_img_s": pl,
        "dataloader_img_s": dl,
        "matmul_gflops": gflops,
        "matmul_gflops_samples": mm_rates,
        "matmul_size": args.matmul_size,
        "forward_macs_per_image": fwd_macs,
        "forward_macs_by_layer": macs,
        "train_flops_per_image": flops_img,
        "train_flops_rule": "training FLOPs = 3 x forward FLOPs; forward FLOPs = 2 x multiply-adds of Conv2d/Linear",
        "roofline_img_s": roof,
        "ratio_vs_dataloader": ratio_dl,
        "ratio_vs_dataloader_median": pl["median"] / dl["median"],
        "ratio_vs_dataloader_if_at_roofline": max_ratio_dl,
        "ratio_vs_roofline": ratio_roof,
        "ratio_vs_roofline_median": pl["median"] / roof,
        "target_vs_dataloader": TARGET_VS_DATALOADER,
        "target_vs_roofline": TARGET_VS_ROOFLINE,
        "verdict_vs_dataloader": verdict(ratio_dl, TARGET_VS_DATALOADER),
        "verdict_vs_roofline": verdict(ratio_roof, TARGET_VS_ROOFLINE),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, load_after],
        "cpu_share_taken_by_others": contention,
        "seconds": time.perf_counter() - t_start,
    }
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json not in ("", "-"):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")
    return result


def print_table(r: dict) -> None:
    pl, dl = r["poisonlab_img_s"], r["dataloader_img_s"]
    rows = [
        ("(1) poisonlab train_model", f"{pl['best']:,.0f} img/s", f"median {pl['median']:,.0f}"),
        ("(2) Dataset+DataLoader loop", f"{dl['best']:,.0f} img/s", f"median {dl['median']:,.0f}"),
        ("(3) roofline", f"{r['roofline_img_s']:,.0f} img/s",
         f"{r['matmul_gflops']:.1f} GFLOP/s / {r['train_flops_per_image'] / 1e6:.2f} MFLOP"),
        ("ratio (1)/(2)", f"{r['ratio_vs_dataloader']:.2f}x",
         f"target >= {r['target_vs_dataloader']}x: {r['verdict_vs_dataloader']} (median {r['ratio_vs_dataloader_median']:.2f}x)"),
        ("ratio roofline/(2)", f"{r['ratio_vs_dataloader_if_at_roofline']:.2f}x",
         "the most (1)/(2) could be if (1) ran at the roofline"),
        ("ratio (1)/roofline", f"{100 * r['ratio_vs_roofline']:.1f}%",
         f"target >= {100 * r['target_vs_roofline']:.0f}%: {r['verdict_vs_roofline']} "
         f"(median {100 * r['ratio_vs_roofline_median']:.1f}%)"),
        ("matmul fp32", f"{r['matmul_gflops']:.1f} GFLOP/s", f"{r['matmul_size']}x{r['matmul_size']}, best of all tries"),
        ("FLOPs / training image", f"{r['train_flops_per_image'] / 1e6:.2f} MFLOP",
         f"= 3 x forward ({2 * r['forward_macs_per_image'] / 1e6:.2f} MFLOP = 2 x {r['forward_macs_per_image']:,} MACs)"),
        ("torch / threads", f"{r['torch']}", f"{r['threads']} thread(s), {r['cpu_count']} CPU(s)"),
        ("CPU", r["cpu"], ""),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    print()
    print(f"BadNets CNN on MNIST, batch {r['batch_size']}, {r['images_per_epoch']} images/epoch, "
          f"best of {r['repeats']} (training FLOPs = 3 x forward FLOPs)")
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>{w1}}  {c}")
    c = r["cpu_share_taken_by_others"]
    if c is not None:
        print(f"  other processes used {100 * c['others']:.0f}% of the CPU time during the run"
              f" (hypervisor steal {100 * c['steal']:.0f}%)")
        if c["others"] + c["steal"] > 0.10:
            print("  WARNING: the machine was shared during the run; numbers are noisy, rerun on an idle machine")
    print()


if __name__ == "__main__":
    main()
