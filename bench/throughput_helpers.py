"""Pure helpers of bench/throughput.py (tested in tests/test_bench_helpers.py): FLOP counting,
the roofline, ratios and verdicts, summaries, machine facts, and the data the bench trains on
(MNIST and GTSRB, each with a random fallback that says so). Nothing here is timed."""
from __future__ import annotations

import gzip
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

TRAIN_FLOPS_FACTOR = 3       # training FLOPs = 3 x forward FLOPs (forward, grad wrt input, grad wrt weights)
GTSRB_SHAPE = (3, 32, 32)
GTSRB_CLASSES = 43
MNIST_CLASSES = 10


# ----------------------------------------------------------------- FLOPs, roofline, verdicts


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


def verdict(value: float | None, target: float | None) -> str | None:
    """``PASS`` when ``value >= target``, else ``MISS``; ``SKIPPED`` without a value, ``None``
    (no verdict) without a target.

    >>> verdict(2.6, 2.5), verdict(0.39, 0.4), verdict(None, 3.0), verdict(1.2, None)
    ('PASS', 'MISS', 'SKIPPED', None)
    """
    if target is None:
        return None
    if value is None:
        return "SKIPPED"
    return "PASS" if value >= target else "MISS"


def summarize(samples: list[float]) -> dict[str, float]:
    """Best, median and worst of repeated rate measurements (higher is better).

    >>> summarize([3.0, 1.0, 2.0])
    {'best': 3.0, 'median': 2.0, 'worst': 1.0, 'samples': [3.0, 1.0, 2.0]}
    """
    return {"best": max(samples), "median": statistics.median(samples), "worst": min(samples),
            "samples": list(samples)}


def rotated(names: list[str], r: int) -> list[str]:
    """The pipeline order of repeat ``r``: ``names`` rotated left by ``r``, so each pipeline
    takes every position in turn.

    >>> rotated(["a", "b", "c"], 0), rotated(["a", "b", "c"], 1), rotated(["a", "b", "c"], 5)
    (['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'])
    """
    if not names:
        return []
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def ratio_entry(ours: dict | None, theirs: dict | None, target: float | None) -> dict:
    """``ours / theirs`` on the best and on the median repeat (summaries as from :func:`summarize`),
    the target and the verdict of the best; ``None`` ratios and ``SKIPPED`` when a side is missing.

    >>> ratio_entry({"best": 6.0, "median": 4.0}, {"best": 2.0, "median": 2.0}, 3.0)
    {'best': 3.0, 'median': 2.0, 'target': 3.0, 'verdict': 'PASS'}
    """
    if ours is None or theirs is None:
        return {"best": None, "median": None, "target": target, "verdict": verdict(None, target)}
    best = ours["best"] / theirs["best"]
    return {"best": best, "median": ours["median"] / theirs["median"], "target": target,
            "verdict": verdict(best, target)}


def model_ratios(rates: dict[str, dict | None], roofline_img_s: float, targets: dict[str, float]) -> dict[str, dict]:
    """The ratios of one model: poisonlab over every other pipeline (``vs_<name>``) and over the
    roofline (``vs_roofline``), each with the target from ``targets`` (same keys) and a verdict;
    plus ``roofline_vs_<name>``: the most ``vs_<name>`` could be if poisonlab ran at the roofline.

    ``rates`` maps pipeline name -> summary (``None``: pipeline skipped); it must hold ``poisonlab``.
    """
    ours = rates["poisonlab"]
    roof = {"best": roofline_img_s, "median": roofline_img_s}
    out: dict[str, dict] = {}
    for name, summary in rates.items():
        if name == "poisonlab":
            continue
        out[f"vs_{name}"] = ratio_entry(ours, summary, targets.get(f"vs_{name}"))
    out["vs_roofline"] = ratio_entry(ours, roof, targets.get("vs_roofline"))
    for name, summary in rates.items():
        if name != "poisonlab":
            bound = ratio_entry(roof, summary, None)
            out[f"roofline_vs_{name}"] = {"best": bound["best"], "median": bound["median"]}
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def warmup_size(images: int, batch_size: int, base: int) -> int:
    """Warm-up images: whole batches, at least 4 and at least ``base`` images, at most ``images``.

    >>> warmup_size(32768, 256, 1024), warmup_size(8192, 128, 1024), warmup_size(100, 32, 1024), warmup_size(8192, 300, 1024)
    (1024, 1024, 100, 1200)
    """
    batches = max(4, -(-base // batch_size))
    return min(images, batches * batch_size)


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
    y = rng.integers(0, MNIST_CLASSES, size=n).astype(np.int64)
    why = "; ".join(notes) or "no --data-dir"
    print(f"NOTE: MNIST files not found ({why}); using RANDOM uint8 images of MNIST shape.", flush=True)
    return x, y, "random uint8 images of MNIST shape (MNIST not found)"


def load_gtsrb_float(data_dir: str | None, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` GTSRB training images as float32 (n, 3, 32, 32) in [0, 1], labels int64, and where
    they came from: a seeded random sample of the training set (which is sorted by class) via
    ``poisonlab.data.load_dataset("gtsrb", data_dir)``, else random uint8-valued images / 255."""
    note = "no --data-dir"
    if data_dir is not None:
        try:
            from poisonlab.data import load_dataset

            t0 = time.perf_counter()
            train = load_dataset("gtsrb", data_dir).train
            if len(train) < n:
                raise ValueError(f"only {len(train)} GTSRB training images, {n} asked for")
            pick = torch.from_numpy(np.random.default_rng(seed).permutation(len(train))[:n])
            x, y = train.x.index_select(0, pick).contiguous(), train.y.index_select(0, pick).to(torch.int64)
            del train
            return x, y, (f"GTSRB via poisonlab.data.load_dataset('gtsrb', {data_dir!r}), random {n} of the "
                          f"training set (loaded in {time.perf_counter() - t0:.1f} s)")
        except Exception as e:  # noqa: BLE001 - any failure falls back to random images
            note = f"poisonlab loader: {type(e).__name__}: {str(e)[:120]}"
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *GTSRB_SHAPE), generator=g, dtype=torch.uint8).to(torch.float32).div_(255)
    y = torch.randint(0, GTSRB_CLASSES, (n,), generator=g)
    print(f"NOTE: GTSRB not found ({note}); using RANDOM uint8-valued images of GTSRB shape.", flush=True)
    return x, y, "random uint8-valued images of GTSRB shape 3x32x32 (GTSRB not found)"


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
