"""Training throughput on CPU: poisonlab's trainer vs IBM ART vs a plain PyTorch loop, in one run.

Two models: the BadNets MNIST CNN (``badnet-mnist``, batch 256) and the GTSRB ``small-cnn``
(options ``convs_per_block: 1, width: 32``, batch 128, as in examples/gtsrb_*.yaml). Per model,
one epoch per repeat of each pipeline (bench/throughput_pipelines.py):

  poisonlab   ``poisonlab.train.train_model``;
  art         ART ``PyTorchClassifier.fit`` (skipped with a NOTE when ART is not installed);
  plain       a plain loop over in-memory tensors (randperm, ``x[idx]``, NCHW);
  dataloader  per-sample ``Dataset`` + ``DataLoader`` (MNIST only);

plus a roofline: the machine's dense float32 matmul rate divided by the model's training FLOPs
per image (3x the forward multiply-adds x 2). Every pipeline is warmed up first; the repeats
are interleaved (pipeline and model order rotate every repeat, a matmul probe follows each
round) so that load from other processes hits all of them alike; the best repeat is the
headline, the median is reported beside it. Targets: poisonlab >= 3x ART and >= 50 % of the
roofline, on each model. See bench/README.md.

    python bench/throughput.py --data-dir ../shared/data            # full run, ~2-3 min on 2 cores
    python bench/throughput.py --quick                              # CI smoke, < 30 s
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
try:  # `make bench` runs with the package installed; a plain checkout needs src/ on the path
    import poisonlab  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the bench is started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from throughput_pipelines import ART_NOTE, ART_VERSION, LABELS, RUNNERS, ModelCase, matmul_gflops  # noqa: E402
from throughput_helpers import (  # noqa: E402
    GTSRB_CLASSES,
    MNIST_CLASSES,
    PerSampleMNIST,
    count_forward_macs,
    cpu_model,
    cpu_snapshot,
    has_batchnorm,
    load_average,
    load_gtsrb_float,
    load_mnist_uint8,
    model_ratios,
    others_cpu_share,
    roofline_images_per_second,
    rotated,
    summarize,
    training_flops_per_image,
    warmup_size,
)

from poisonlab import progress  # noqa: E402
from poisonlab.train import TrainConfig  # noqa: E402

MODEL = "badnet-mnist"        # the model of the top-level (pre-issue-12) JSON keys
TARGET_VS_ART = 3.0           # poisonlab / ART, each model
TARGET_VS_ROOFLINE = 0.50     # poisonlab / roofline, each model
TARGET_VS_DATALOADER = 2.5    # poisonlab / DataLoader loop (MNIST; earlier target, still reported)
TARGETS = {"vs_art": TARGET_VS_ART, "vs_roofline": TARGET_VS_ROOFLINE, "vs_dataloader": TARGET_VS_DATALOADER}
# the batch sizes the project uses for these models on CPU (examples/mnist_badnets_*.yaml: 256;
# examples/gtsrb_*.yaml: 128) and the GTSRB examples' model options and SGD settings
RECOMMENDED_BATCH_SIZE = 256
GTSRB_BATCH_SIZE = 128
GTSRB_OPTIONS = {"convs_per_block": 1, "width": 32}
MODEL_KEYS = ("badnet-mnist", "small-cnn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/ and gtsrb/")
    p.add_argument("--models", default=",".join(MODEL_KEYS), help=f"comma-separated subset of {', '.join(MODEL_KEYS)}")
    p.add_argument("--images", type=int, default=None, help="MNIST images per timed epoch (default 16384; quick 1024)")
    p.add_argument("--gtsrb-images", type=int, default=None, help="GTSRB images per timed epoch (default 8192; quick 512)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per pipeline (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, default=RECOMMENDED_BATCH_SIZE,
                   help=f"MNIST batch size (default {RECOMMENDED_BATCH_SIZE}, as in the MNIST examples)")
    p.add_argument("--gtsrb-batch-size", type=int, default=GTSRB_BATCH_SIZE,
                   help=f"GTSRB batch size (default {GTSRB_BATCH_SIZE}, as in the GTSRB examples)")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul side for the roofline (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that finishes in < 30 s")
    p.add_argument("--json", default=str(Path(__file__).with_name("last_throughput.json")),
                   help="where to write the results as JSON ('' or '-' to skip writing)")
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images if args.images is not None else (1024 if q else 16384)
    args.gtsrb_images = args.gtsrb_images if args.gtsrb_images is not None else (512 if q else 8192)
    args.repeats = args.repeats if args.repeats is not None else (1 if q else 3)
    args.matmul_size = args.matmul_size if args.matmul_size is not None else (1024 if q else 2048)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in MODEL_KEYS for m in args.models):
        p.error(f"--models must name some of {', '.join(MODEL_KEYS)}")
    if min(args.images, args.gtsrb_images, args.repeats, args.batch_size, args.gtsrb_batch_size) < 1 \
            or args.matmul_size < 16:
        p.error("--images, --gtsrb-images, --repeats and the batch sizes must be >= 1 and --matmul-size >= 16")
    return args


def build_cases(args: argparse.Namespace) -> list[ModelCase]:
    """The models, their data (timed + warm-up sets) and their training settings."""
    warm_base = 256 if args.quick else 1024
    cases = []
    for key in args.models:
        if key == "badnet-mnist":
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size)
            case = ModelCase(key, "badnet-mnist", (1, 28, 28), MNIST_CLASSES, {}, cfg, args.seed)
            n = args.images
            warm = warmup_size(n, cfg.batch_size, warm_base)
            images, labels, case.data = load_mnist_uint8(args.data_dir, n + warm, args.seed)
            if len(labels) < n + warm:
                raise SystemExit(f"only {len(labels)} MNIST images available; lower --images")
            x = torch.from_numpy(images).to(torch.float32).div_(255).unsqueeze(1)  # exactly what the loader yields
            case.set_data(x, torch.from_numpy(labels).to(torch.int64), n, [str(i) for i in range(MNIST_CLASSES)])
            case.per_sample = {"timed": PerSampleMNIST(images[:n], labels[:n]),
                               "warm": PerSampleMNIST(images[n:], labels[n:])}
        else:
            cfg = TrainConfig(epochs=1, batch_size=args.gtsrb_batch_size, lr=0.05, momentum=0.9, weight_decay=0.0005)
            case = ModelCase(key, "small-cnn", (3, 32, 32), GTSRB_CLASSES, dict(GTSRB_OPTIONS), cfg, args.seed)
            n = args.gtsrb_images
            warm = warmup_size(n, cfg.batch_size, warm_base)
            x, y, case.data = load_gtsrb_float(args.data_dir, n + warm, args.seed)
            case.set_data(x, y, n, [str(i) for i in range(GTSRB_CLASSES)])
        if has_batchnorm(case.fresh_model()) and 1 in (n % cfg.batch_size, warm % cfg.batch_size):
            raise SystemExit(f"{key} has batch norm: an epoch of {n} (warm-up {warm}) images in batches of "
                             f"{cfg.batch_size} would end with a batch of 1; change the image count")
        cases.append(case)
    return cases


def all_pipelines(case: ModelCase) -> list[str]:
    """Every pipeline of the model, run or skipped (the DataLoader loop needs per-sample uint8 images)."""
    return ["poisonlab", "art", "plain"] + (["dataloader"] if case.per_sample else [])


def pipelines_for(case: ModelCase) -> list[str]:
    """The pipelines that run: all but ART when ART is not importable."""
    return [n for n in all_pipelines(case) if n != "art" or ART_VERSION is not None]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress.set_enabled(False)  # a live progress bar would steal CPU from the timed loops
    load_before = load_average()
    snap_before = cpu_snapshot()
    t_start = time.perf_counter()
    if ART_VERSION is None:
        print(f"NOTE: {ART_NOTE}; the ART pipeline is SKIPPED.", flush=True)

    cases = build_cases(args)
    pipes = {c.key: pipelines_for(c) for c in cases}
    flops = {}
    for c in cases:
        macs = count_forward_macs(c.fresh_model(), c.shape)
        flops[c.key] = (macs, sum(macs.values()), training_flops_per_image(sum(macs.values())))
        print(f"{c.key}: {c.data}; {len(c.tensors['timed'][1])} timed images/epoch, "
              f"{len(c.tensors['warm'][1])} warm-up images, batch {c.cfg.batch_size}; pipelines "
              f"{', '.join(pipes[c.key])}", flush=True)
    print(f"{args.repeats} repeat(s), {torch.get_num_threads()} thread(s)", flush=True)

    # warm-up: allocator, oneDNN primitive caches, the matmul kernels
    for c in cases:
        for p in pipes[c.key]:
            RUNNERS[p](c, "warm")
    matmul_gflops(args.matmul_size, 1)

    rates: dict[str, dict[str, list[float]]] = {c.key: {p: [] for p in pipes[c.key]} for c in cases}
    mm_rates: list[float] = []
    mm_tries = 3 if args.quick else 5
    for r in range(args.repeats):
        for c in rotated(cases, r):
            for p in rotated(pipes[c.key], r):
                rates[c.key][p].append(RUNNERS[p](c, "timed"))
        mm_rates.append(matmul_gflops(args.matmul_size, mm_tries))
        line = "; ".join(f"{c.key} " + ", ".join(f"{p} {rates[c.key][p][-1]:,.0f}" for p in pipes[c.key])
                         for c in cases)
        print(f"  repeat {r + 1}/{args.repeats} (img/s): {line}; matmul {mm_rates[-1]:,.1f} GFLOP/s", flush=True)

    gflops = max(mm_rates)
    models = {}
    for c in cases:
        macs, fwd, flops_img = flops[c.key]
        summaries = {p: summarize(rates[c.key][p]) for p in pipes[c.key]}
        all_rates = {p: summaries.get(p) for p in all_pipelines(c)}
        roof = roofline_images_per_second(gflops, flops_img)
        models[c.key] = {
            "model": c.name, "options": c.options, "input_shape": list(c.shape), "num_classes": c.num_classes,
            "data": c.data, "images_per_epoch": len(c.tensors["timed"][1]),
            "warmup_images": len(c.tensors["warm"][1]), "batch_size": c.cfg.batch_size,
            "optimizer": {"name": "sgd", "lr": c.cfg.lr, "momentum": c.cfg.momentum, "nesterov": c.cfg.momentum > 0,
                          "weight_decay": c.cfg.weight_decay, "foreach": True},
            "img_s": all_rates,
            "skipped": {p: ART_NOTE for p, s in all_rates.items() if s is None},
            "forward_macs_per_image": fwd, "forward_macs_by_layer": macs, "train_flops_per_image": flops_img,
            "roofline_img_s": roof,
            "ratios": model_ratios(all_rates, roof, TARGETS),
        }
    result: dict = {}
    if MODEL in models:  # the keys bench/last_throughput.json had before issue 12 (MNIST)
        m = models[MODEL]
        rt = m["ratios"]
        result.update({
            "model": MODEL, "data": m["data"], "images_per_epoch": m["images_per_epoch"],
            "batch_size": m["batch_size"], "repeats": args.repeats, "quick": args.quick,
            "poisonlab_img_s": m["img_s"]["poisonlab"], "dataloader_img_s": m["img_s"]["dataloader"],
            "matmul_gflops": gflops, "matmul_gflops_samples": mm_rates, "matmul_size": args.matmul_size,
            "forward_macs_per_image": m["forward_macs_per_image"], "forward_macs_by_layer": m["forward_macs_by_layer"],
            "train_flops_per_image": m["train_flops_per_image"],
            "roofline_img_s": m["roofline_img_s"],
            "ratio_vs_dataloader": rt["vs_dataloader"]["best"],
            "ratio_vs_dataloader_median": rt["vs_dataloader"]["median"],
            "ratio_vs_dataloader_if_at_roofline": rt["roofline_vs_dataloader"]["best"],
            "ratio_vs_roofline": rt["vs_roofline"]["best"],
            "ratio_vs_roofline_median": rt["vs_roofline"]["median"],
            "target_vs_dataloader": TARGET_VS_DATALOADER, "target_vs_roofline": TARGET_VS_ROOFLINE,
            "verdict_vs_dataloader": rt["vs_dataloader"]["verdict"], "verdict_vs_roofline": rt["vs_roofline"]["verdict"],
        })
    verdicts = {f"{k}.{name}": e["verdict"] for k, m in models.items() for name, e in m["ratios"].items()
                if name in ("vs_art", "vs_roofline")}
    result.update({
        "repeats": args.repeats, "quick": args.quick,
        "matmul_gflops": gflops, "matmul_gflops_samples": mm_rates, "matmul_size": args.matmul_size,
        "train_flops_rule": "training FLOPs = 3 x forward FLOPs; forward FLOPs = 2 x multiply-adds of Conv2d/Linear",
        "targets": TARGETS,
        "verdicts": verdicts,
        "all_targets_met": all(v == "PASS" for v in verdicts.values()),
        "art": {"available": ART_VERSION is not None, "version": ART_VERSION, "note": ART_NOTE},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "load_average_1min": [load_before, load_average()],
        "cpu_share_taken_by_others": others_cpu_share(snap_before, cpu_snapshot(), os.cpu_count() or 1),
        "seconds": time.perf_counter() - t_start,
        "models": models,
    })
    print_tables(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json not in ("", "-"):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")
    return result


def _ratio_cell(e: dict, percent: bool = False) -> tuple[str, str]:
    if e["best"] is None:
        return "n/a", "SKIPPED (ART not installed)"
    fmt = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.2f}x")
    tail = f"median {fmt(e['median'])}"
    if e.get("target") is not None:
        tail = f"target >= {fmt(e['target'])}: {e['verdict']} ({tail})"
    return fmt(e["best"]), tail


def print_tables(r: dict) -> None:
    for key, m in r["models"].items():
        rows = []
        for p, s in m["img_s"].items():
            rows.append((LABELS[p], "skipped" if s is None else f"{s['best']:,.0f} img/s",
                         "" if s is None else f"median {s['median']:,.0f}"))
        rows.append(("roofline", f"{m['roofline_img_s']:,.0f} img/s",
                     f"{r['matmul_gflops']:.1f} GFLOP/s / {m['train_flops_per_image'] / 1e6:.2f} MFLOP"))
        for name, e in m["ratios"].items():
            if name.startswith("roofline_vs_"):
                other = name[len("roofline_vs_"):]
                if e["best"] is not None:
                    rows.append((f"roofline / {other}", f"{e['best']:.2f}x", f"the most poisonlab / {other} could be"))
                continue
            rows.append((f"poisonlab / {name[3:]}", *_ratio_cell(e, percent=name == "vs_roofline")))
        rows.append(("FLOPs / training image", f"{m['train_flops_per_image'] / 1e6:.2f} MFLOP",
                     f"= 3 x forward ({2 * m['forward_macs_per_image'] / 1e6:.2f} MFLOP = 2 x "
                     f"{m['forward_macs_per_image']:,} MACs)"))
        w0 = max(len(a) for a, _, _ in rows)
        w1 = max(len(b) for _, b, _ in rows)
        opts = f" {m['options']}" if m["options"] else ""
        print()
        print(f"{key}{opts}: {m['data']}")
        print(f"  batch {m['batch_size']}, {m['images_per_epoch']} images/epoch, best of {r['repeats']}")
        for a, b, c in rows:
            print(f"  {a:<{w0}}  {b:>{w1}}  {c}")
    print()
    print(f"matmul fp32 {r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_size']}x{r['matmul_size']}, best of all tries); "
          f"torch {r['torch']}, {r['threads']} thread(s), {r['cpu_count']} CPU(s), {r['cpu']}; "
          f"ART: {r['art']['note']}")
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in r["verdicts"].items()))
    c = r["cpu_share_taken_by_others"]
    if c is not None:
        print(f"other processes used {100 * c['others']:.0f}% of the CPU time during the run"
              f" (hypervisor steal {100 * c['steal']:.0f}%)")
        if c["others"] + c["steal"] > 0.10:
            print("WARNING: the machine was shared during the run; numbers are noisy, rerun on an idle machine")
    print(f"{r['seconds']:.0f} s in all")
    print()


if __name__ == "__main__":
    main()
