"""bench/throughput.py and its helpers: FLOP counts, roofline, ratios, verdicts, IDX parsing,
data fallbacks, the pipelines' shared settings, and a tiny untimed smoke run."""
from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.models import build_model
from poisonlab.train import TrainConfig, _make_optimizer

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
BENCH = BENCH_DIR / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module
    spec.loader.exec_module(module)  # puts bench/ on sys.path for its sibling modules
    yield module
    sys.modules.pop("bench_throughput", None)


@pytest.fixture(scope="module")
def helpers(bench):
    return importlib.import_module("throughput_helpers")


@pytest.fixture(scope="module")
def pipes(bench):
    return importlib.import_module("throughput_pipelines")


def test_badnet_forward_macs_by_hand(helpers):
    macs = helpers.count_forward_macs(build_model("badnet-mnist", (1, 28, 28), 10), (1, 28, 28))
    assert macs == {
        "conv1": 16 * 24 * 24 * (1 * 5 * 5),
        "conv2": 32 * 8 * 8 * (16 * 5 * 5),
        "fc1": 512 * 512,
        "fc2": 512 * 10,
    }
    assert helpers.training_flops_per_image(sum(macs.values())) == 6 * 1_316_864


def test_macs_count_groups_and_leave_model_mode_alone(helpers):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    model.train()
    macs = helpers.count_forward_macs(model, (4, 6, 6))
    assert macs == {"0": 8 * 4 * 4 * (2 * 9), "2": 128 * 3}
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())


def test_roofline_and_verdicts(helpers):
    assert helpers.roofline_images_per_second(200.0, 8e6) == pytest.approx(25_000.0)
    assert helpers.verdict(0.4, 0.4) == "PASS"
    assert helpers.verdict(0.399, 0.4) == "MISS"
    s = helpers.summarize([5.0, 1.0, 3.0, 4.0])
    assert (s["best"], s["median"], s["worst"]) == (5.0, 3.5, 1.0)


def test_others_cpu_share(helpers):
    assert helpers.others_cpu_share(None, (1.0, 1.0, 0.0, 1.0), 2) is None
    share = helpers.others_cpu_share((0.0, 5.0, 0.0, 2.0), (4.0, 11.0, 0.4, 6.0), 2)
    assert share == {"others": pytest.approx(0.25), "steal": pytest.approx(0.05)}


def test_parse_idx_round_trip_and_errors(helpers):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes() + images.tobytes()
    assert np.array_equal(helpers.parse_idx(raw), images)
    with pytest.raises(ValueError, match="not an IDX"):
        helpers.parse_idx(b"\x1f\x8b\x08\x00")
    with pytest.raises(ValueError, match="size mismatch"):
        helpers.parse_idx(raw[:-1])


def test_loads_idx_files_without_the_loader(helpers, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    header_img = bytes([0, 0, 8, 3]) + np.array([7, 28, 28], dtype=">u4").tobytes()
    header_lab = bytes([0, 0, 8, 1]) + np.array([7], dtype=">u4").tobytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header_img + images.tobytes()))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header_lab + labels.tobytes()))
    assert np.array_equal(helpers._read_idx_gz(folder, "train-images-idx3-ubyte"), images)
    # without the t10k files poisonlab's loader refuses the folder; the bench reads the IDX files itself
    x, y, source = helpers.load_mnist_uint8(str(tmp_path), 5, seed=0)
    assert np.array_equal(x, images[:5]) and np.array_equal(y, labels[:5].astype(np.int64))
    assert "MNIST" in source and "random" not in source


def test_random_fallback_says_so(helpers, tmp_path, capsys):
    x, y, source = helpers.load_mnist_uint8(str(tmp_path / "absent"), 6, seed=0)
    assert x.shape == (6, 28, 28) and x.dtype == np.uint8 and y.shape == (6,)
    assert "random" in source and "RANDOM" in capsys.readouterr().out


def test_per_sample_dataset_is_to_tensor(helpers):
    images = np.array([[[0, 255] + [0] * 26] * 28], dtype=np.uint8)
    x, label = helpers.PerSampleMNIST(images, np.array([3]))[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and label == 3
    assert x[0, 0, 1].item() == 1.0 and x[0, 0, 0].item() == 0.0


def test_small_cnn_gtsrb_macs_by_hand(helpers):
    # the GTSRB examples' small-cnn: 3 blocks of one 3x3 conv (32-64-128, padding 1) + 2x2 max-pool, fc256, fc43
    model = build_model("small-cnn", (3, 32, 32), 43, {"convs_per_block": 1, "width": 32})
    macs = helpers.count_forward_macs(model, (3, 32, 32))
    assert macs == {
        "conv1": 32 * 32 * 32 * (3 * 3 * 3),
        "conv2": 64 * 16 * 16 * (32 * 3 * 3),
        "conv3": 128 * 8 * 8 * (64 * 3 * 3),
        "fc1": (128 * 4 * 4) * 256,
        "fc2": 256 * 43,
    }
    assert sum(macs.values()) == 10_857_216
    assert helpers.training_flops_per_image(10_857_216) == 65_143_296
    assert helpers.has_batchnorm(model) and not helpers.has_batchnorm(build_model("badnet-mnist", (1, 28, 28), 10))


def test_verdict_edge_cases(helpers):
    assert helpers.verdict(3.0, 3.0) == "PASS"
    assert helpers.verdict(2.999, 3.0) == "MISS"
    assert helpers.verdict(None, 3.0) == "SKIPPED"
    assert helpers.verdict(0.1, None) is None


def test_ratio_entry_on_given_numbers(helpers):
    e = helpers.ratio_entry({"best": 9000.0, "median": 8000.0}, {"best": 2000.0, "median": 2500.0}, 3.0)
    assert e == {"best": pytest.approx(4.5), "median": pytest.approx(3.2), "target": 3.0, "verdict": "PASS"}
    # the verdict follows the best repeat, not the median
    e = helpers.ratio_entry({"best": 5900.0, "median": 9000.0}, {"best": 2000.0, "median": 2000.0}, 3.0)
    assert e["verdict"] == "MISS" and e["median"] == pytest.approx(4.5)
    assert helpers.ratio_entry({"best": 1.0, "median": 1.0}, None, 3.0) == {
        "best": None, "median": None, "target": 3.0, "verdict": "SKIPPED"}


def test_model_ratios_on_given_numbers(helpers):
    rates = {"poisonlab": {"best": 1500.0, "median": 1400.0}, "art": {"best": 600.0, "median": 500.0},
             "plain": {"best": 1000.0, "median": 1000.0}}
    targets = {"vs_art": 3.0, "vs_roofline": 0.5}
    r = helpers.model_ratios(rates, 2800.0, targets)
    assert set(r) == {"vs_art", "vs_plain", "vs_roofline", "roofline_vs_art", "roofline_vs_plain"}
    assert r["vs_art"]["best"] == pytest.approx(2.5) and r["vs_art"]["verdict"] == "MISS"
    assert r["vs_art"]["median"] == pytest.approx(2.8)
    assert r["vs_plain"] == {"best": pytest.approx(1.5), "median": pytest.approx(1.4), "target": None, "verdict": None}
    assert r["vs_roofline"]["best"] == pytest.approx(1500 / 2800) and r["vs_roofline"]["verdict"] == "PASS"
    assert r["vs_roofline"]["median"] == pytest.approx(0.5)
    assert r["roofline_vs_art"] == {"best": pytest.approx(2800 / 600), "median": pytest.approx(2800 / 500)}
    # ART missing: its ratio is skipped, the rest is still computed
    r = helpers.model_ratios({**rates, "art": None}, 4000.0, targets)
    assert r["vs_art"]["verdict"] == "SKIPPED" and r["vs_art"]["best"] is None
    assert r["roofline_vs_art"] == {"best": None, "median": None}
    assert r["vs_roofline"]["verdict"] == "MISS" and r["vs_roofline"]["best"] == pytest.approx(0.375)


def test_rotation_puts_every_pipeline_everywhere(helpers):
    names = ["poisonlab", "art", "plain", "dataloader"]
    orders = [helpers.rotated(names, r) for r in range(4)]
    for pos in range(4):
        assert sorted(o[pos] for o in orders) == sorted(names)
    assert helpers.rotated(names, 4) == names and helpers.rotated([], 3) == []


def test_warmup_size_whole_batches(helpers):
    assert helpers.warmup_size(16384, 256, 1024) == 1024
    assert helpers.warmup_size(8192, 128, 1024) == 1024
    assert helpers.warmup_size(512, 128, 256) == 512        # quick: 4 batches of 128
    assert helpers.warmup_size(64, 32, 256) == 64           # capped at the timed size
    assert helpers.warmup_size(8192, 100, 1024) == 1100     # 11 whole batches


def test_gtsrb_random_fallback_says_so(helpers, tmp_path, capsys):
    x, y, source = helpers.load_gtsrb_float(str(tmp_path / "absent"), 5, seed=0)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x * 255, (x * 255).round())  # uint8-valued, like decoded images / 255
    assert int(y.max()) < 43 and "random" in source and "RANDOM" in capsys.readouterr().out


def test_pipelines_use_poisonlabs_optimizer(pipes):
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, momentum=0.9, weight_decay=0.0005)
    model = build_model("small-cnn", (3, 32, 32), 43, {"convs_per_block": 1, "width": 32})
    ours, theirs = pipes.make_sgd(model, cfg), _make_optimizer(model, cfg)
    assert type(ours) is type(theirs) and ours.defaults == theirs.defaults
    assert ours.defaults["nesterov"] and ours.defaults["foreach"]
    assert [p for g in ours.param_groups for p in g["params"]] == [p for g in theirs.param_groups for p in g["params"]]


def test_model_case_same_init_and_split(pipes):
    cfg = TrainConfig(epochs=1, batch_size=4)
    case = pipes.ModelCase("badnet-mnist", "badnet-mnist", (1, 28, 28), 10, {}, cfg, seed=3)
    a, b = case.fresh_model(), case.fresh_model()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x, y = torch.rand(10, 1, 28, 28), torch.arange(10) % 10
    case.set_data(x, y, 6, [str(i) for i in range(10)])
    assert len(case.tensors["timed"][1]) == 6 and len(case.datasets["warm"]) == 4
    xt, _ = case.arrays["timed"]
    assert xt.dtype == np.float32 and xt.shape == (6, 1, 28, 28) and np.array_equal(xt, x[:6].numpy())


def test_art_missing_drops_only_the_art_pipeline(bench, pipes, monkeypatch):
    case = pipes.ModelCase("small-cnn", "small-cnn", (3, 32, 32), 43, {}, TrainConfig(), seed=0)
    monkeypatch.setattr(bench, "ART_VERSION", None)
    assert bench.pipelines_for(case) == ["poisonlab", "plain"]
    monkeypatch.setattr(bench, "ART_VERSION", "1.20.1")
    assert bench.pipelines_for(case) == ["poisonlab", "art", "plain"]


def test_batchnorm_batch_of_one_refused(bench, tmp_path):
    args = bench.parse_args(["--data-dir", str(tmp_path / "absent"), "--models", "small-cnn",
                             "--gtsrb-images", "33", "--gtsrb-batch-size", "32"])
    with pytest.raises(SystemExit, match="batch of 1"):
        bench.build_cases(args)


@pytest.mark.slow
def test_tiny_run_writes_json(bench, tmp_path):
    out = tmp_path / "r.json"
    result = bench.main(["--data-dir", str(tmp_path / "absent"), "--images", "64", "--gtsrb-images", "64",
                         "--repeats", "2", "--batch-size", "32", "--gtsrb-batch-size", "32",
                         "--matmul-size", "64", "--json", str(out)])
    saved = json.loads(out.read_text())
    # the keys the file had before the ART comparison (MNIST)
    assert saved["verdict_vs_roofline"] in ("PASS", "MISS")
    assert saved["train_flops_per_image"] == 6 * 1_316_864
    assert result["poisonlab_img_s"]["best"] > 0 and result["dataloader_img_s"]["best"] > 0
    # one section per model, every pipeline's samples, the ratios with verdicts
    assert set(saved["models"]) == {"badnet-mnist", "small-cnn"}
    art = saved["art"]["available"]
    for key, pipelines in (("badnet-mnist", {"poisonlab", "art", "plain", "dataloader"}),
                           ("small-cnn", {"poisonlab", "art", "plain"})):
        m = saved["models"][key]
        assert set(m["img_s"]) == pipelines
        for name, s in m["img_s"].items():
            if name == "art" and not art:
                assert s is None
            else:
                assert len(s["samples"]) == 2 and s["best"] == max(s["samples"])
        assert m["ratios"]["vs_roofline"]["verdict"] in ("PASS", "MISS")
        assert m["ratios"]["vs_art"]["verdict"] in (("PASS", "MISS") if art else ("SKIPPED",))
        assert m["ratios"]["vs_art"]["target"] == 3.0 and m["ratios"]["vs_roofline"]["target"] == 0.5
    assert saved["models"]["small-cnn"]["train_flops_per_image"] == 65_143_296
    assert set(saved["verdicts"]) == {"badnet-mnist.vs_art", "badnet-mnist.vs_roofline",
                                      "small-cnn.vs_art", "small-cnn.vs_roofline"}


@pytest.mark.slow
def test_tiny_run_without_art_says_so(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "ART_VERSION", None)
    monkeypatch.setattr(bench, "ART_NOTE", "ART not importable (test)")
    result = bench.main(["--data-dir", str(tmp_path / "absent"), "--models", "badnet-mnist", "--images", "64",
                         "--repeats", "1", "--batch-size", "32", "--matmul-size", "64", "--json", "-"])
    assert "NOTE: ART not importable (test)" in capsys.readouterr().out
    m = result["models"]["badnet-mnist"]
    assert m["img_s"]["art"] is None and m["skipped"] == {"art": "ART not importable (test)"}
    assert m["ratios"]["vs_art"]["verdict"] == "SKIPPED" and result["verdicts"]["badnet-mnist.vs_art"] == "SKIPPED"
    assert result["art"] == {"available": False, "version": None, "note": "ART not importable (test)"}
    assert not result["all_targets_met"] and m["img_s"]["plain"]["best"] > 0
