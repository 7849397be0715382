"""bench/throughput.py: the pure helpers (FLOP count, roofline, IDX parsing, verdicts) and a tiny smoke run."""
from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.models import build_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_throughput", None)


def test_badnet_forward_macs_by_hand(bench):
    macs = bench.count_forward_macs(build_model("badnet-mnist", (1, 28, 28), 10), (1, 28, 28))
    assert macs == {
        "conv1": 16 * 24 * 24 * (1 * 5 * 5),
        "conv2": 32 * 8 * 8 * (16 * 5 * 5),
        "fc1": 512 * 512,
        "fc2": 512 * 10,
    }
    assert bench.training_flops_per_image(sum(macs.values())) == 6 * 1_316_864


def test_macs_count_groups_and_leave_model_mode_alone(bench):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    model.train()
    macs = bench.count_forward_macs(model, (4, 6, 6))
    assert macs == {"0": 8 * 4 * 4 * (2 * 9), "2": 128 * 3}
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())


def test_roofline_and_verdicts(bench):
    assert bench.roofline_images_per_second(200.0, 8e6) == pytest.approx(25_000.0)
    assert bench.verdict(0.4, 0.4) == "PASS"
    assert bench.verdict(0.399, 0.4) == "MISS"
    s = bench.summarize([5.0, 1.0, 3.0, 4.0])
    assert (s["best"], s["median"], s["worst"]) == (5.0, 3.5, 1.0)


def test_others_cpu_share(bench):
    assert bench.others_cpu_share(None, (1.0, 1.0, 0.0, 1.0), 2) is None
    share = bench.others_cpu_share((0.0, 5.0, 0.0, 2.0), (4.0, 11.0, 0.4, 6.0), 2)
    assert share == {"others": pytest.approx(0.25), "steal": pytest.approx(0.05)}


def test_parse_idx_round_trip_and_errors(bench):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes() + images.tobytes()
    assert np.array_equal(bench.parse_idx(raw), images)
    with pytest.raises(ValueError, match="not an IDX"):
        bench.parse_idx(b"\x1f\x8b\x08\x00")
    with pytest.raises(ValueError, match="size mismatch"):
        bench.parse_idx(raw[:-1])


def test_loads_idx_files_without_the_loader(bench, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    header_img = bytes([0, 0, 8, 3]) + np.array([7, 28, 28], dtype=">u4").tobytes()
    header_lab = bytes([0, 0, 8, 1]) + np.array([7], dtype=">u4").tobytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header_img + images.tobytes()))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header_lab + labels.tobytes()))
    assert np.array_equal(bench._read_idx_gz(folder, "train-images-idx3-ubyte"), images)
    # without the t10k files poisonlab's loader refuses the folder; the bench reads the IDX files itself
    x, y, source = bench.load_mnist_uint8(str(tmp_path), 5, seed=0)
    assert np.array_equal(x, images[:5]) and np.array_equal(y, labels[:5].astype(np.int64))
    assert "MNIST" in source and "random" not in source


def test_random_fallback_says_so(bench, tmp_path, capsys):
    x, y, source = bench.load_mnist_uint8(str(tmp_path / "absent"), 6, seed=0)
    assert x.shape == (6, 28, 28) and x.dtype == np.uint8 and y.shape == (6,)
    assert "random" in source and "RANDOM" in capsys.readouterr().out


def test_per_sample_dataset_is_to_tensor(bench):
    images = np.array([[[0, 255] + [0] * 26] * 28], dtype=np.uint8)
    x, label = bench.PerSampleMNIST(images, np.array([3]))[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and label == 3
    assert x[0, 0, 1].item() == 1.0 and x[0, 0, 0].item() == 0.0


@pytest.mark.slow
def test_tiny_run_writes_json(bench, tmp_path):
    out = tmp_path / "r.json"
    result = bench.main(["--data-dir", str(tmp_path / "absent"), "--images", "64", "--repeats", "1",
                         "--batch-size", "32", "--matmul-size", "64", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["verdict_vs_roofline"] in ("PASS", "MISS")
    assert saved["train_flops_per_image"] == 6 * 1_316_864
    assert result["poisonlab_img_s"]["best"] > 0 and result["dataloader_img_s"]["best"] > 0
