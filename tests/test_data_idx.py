"""MNIST / Fashion-MNIST IDX loader on tiny fixtures written in the real IDX format."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from local_http import serve

from poisonlab.data import idx
from poisonlab.data.base import DATASETS, load_dataset
from poisonlab.errors import PoisonlabError

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a real ~/.cache/poisonlab or $POISONLAB_DATA from answering instead of the fixture."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    monkeypatch.delenv("POISONLAB_MIRROR_MNIST", raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file: magic 0x0000080<ndim>, big-endian uint32 dims, then uint8 data."""
    return struct.pack(">I", 0x800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def fixture_arrays() -> dict[str, np.ndarray]:
    train = np.zeros((3, 28, 28), np.uint8)
    train[0, 0, 0] = 255
    train[1, 27, 27] = 51
    train[2, 5, 7] = 102
    test = np.full((2, 28, 28), 17, np.uint8)
    test[1, 13, 14] = 204
    return {
        "train_images": train,
        "train_labels": np.array([3, 0, 9], np.uint8),
        "test_images": test,
        "test_labels": np.array([7, 1], np.uint8),
    }


def write_set(folder: Path, gz: bool | dict[str, bool] = True, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = arrays or fixture_arrays()
    paths = {}
    for role, arr in arrays.items():
        zipped = gz[role] if isinstance(gz, dict) else gz
        data = idx_bytes(arr)
        path = folder / (NAMES[role] + (".gz" if zipped else ""))
        path.write_bytes(gzip.compress(data) if zipped else data)
        paths[role] = path
    return paths


def check_fixture(split) -> None:
    a = fixture_arrays()
    assert split.train.x.shape == (3, 1, 28, 28) and split.train.x.dtype == torch.float32
    assert split.test.x.shape == (2, 1, 28, 28)
    assert split.train.y.tolist() == [3, 0, 9] and split.test.y.dtype == torch.int64
    assert split.test.y.tolist() == [7, 1]
    assert split.train.x[0, 0, 0, 0] == 1.0 and split.train.x[1, 0, 27, 27] == pytest.approx(0.2)
    assert split.train.x[2, 0, 5, 7] == pytest.approx(0.4) and split.train.x[0].sum() == 1.0
    assert torch.equal(split.test.x, torch.from_numpy(a["test_images"]).float().div(255).unsqueeze(1))


@pytest.mark.parametrize("gz", [True, False, {"train_images": True, "train_labels": False, "test_images": False, "test_labels": True}])
def test_loads_gz_raw_and_mixed(tmp_path: Path, gz) -> None:
    write_set(tmp_path / "mnist", gz)
    split = load_dataset("mnist", tmp_path)
    check_fixture(split)
    assert split.train.classes == [str(i) for i in range(10)]


def test_fashion_mnist_classes_and_folder(tmp_path: Path) -> None:
    write_set(tmp_path / "fashion_mnist")
    split = load_dataset("fashion-mnist", tmp_path)
    check_fixture(split)
    assert split.train.classes[0] == "T-shirt/top" and split.train.classes[9] == "Ankle boot"
    assert len(split.test.classes) == 10


def test_registry_specs() -> None:
    for name in ("mnist", "fashion-mnist"):
        spec = DATASETS.get(name)
        assert spec.downloadable and len(spec.files) == 4


def test_present_finds_fixture(tmp_path: Path) -> None:
    write_set(tmp_path / "MNIST", gz=False)
    assert DATASETS.get("mnist").present(tmp_path) == (True, tmp_path / "MNIST")


def _corrupt(tmp_path: Path, role: str, data: bytes, gz: bool = True) -> Path:
    paths = write_set(tmp_path / "mnist")
    path = paths[role]
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize(
    "role, make, expected",
    [
        ("train_images", lambda d: b"\x00\x00\x08\x01" + d[4:], "magic"),
        ("train_labels", lambda d: b"\x00\x00\x08\x03" + d[4:], "magic"),
        ("test_images", lambda d: d[:-5], "truncated"),
        ("test_labels", lambda d: d[:3], "truncated"),
        ("train_images", lambda d: d + b"\x00", "bytes after"),
    ],
)
def test_bad_idx_files_named_in_error(tmp_path: Path, role: str, make, expected: str) -> None:
    path = _corrupt(tmp_path, role, make(idx_bytes(fixture_arrays()[role])))
    with pytest.raises(PoisonlabError, match=expected) as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_gzip_named(tmp_path: Path) -> None:
    paths = write_set(tmp_path / "mnist")
    good = paths["train_labels"].read_bytes()
    paths["train_labels"].write_bytes(good[:-12])  # cut the gzip trailer
    with pytest.raises(PoisonlabError, match="corrupt gzip") as err:
        load_dataset("mnist", tmp_path)
    assert str(paths["train_labels"]) in str(err.value)


def test_label_count_mismatch(tmp_path: Path) -> None:
    arrays = fixture_arrays()
    arrays["train_labels"] = np.array([1, 2], np.uint8)
    paths = write_set(tmp_path / "mnist", arrays=arrays)
    with pytest.raises(PoisonlabError, match="2 labels but .* 3 images") as err:
        load_dataset("mnist", tmp_path)
    assert str(paths["train_labels"]) in str(err.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = fixture_arrays()
    arrays["test_labels"] = np.array([7, 10], np.uint8)
    write_set(tmp_path / "mnist", arrays=arrays)
    with pytest.raises(PoisonlabError, match="label 10 out of range"):
        load_dataset("mnist", tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    arrays = fixture_arrays()
    arrays["test_images"] = np.zeros((2, 8, 8), np.uint8)
    write_set(tmp_path / "mnist", arrays=arrays)
    with pytest.raises(PoisonlabError, match="8x8"):
        load_dataset("mnist", tmp_path)


def test_missing_files_message(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PoisonlabError, match="--download") as err:
        idx.load_mnist([tmp_path / "mnist"])
    assert "t10k-labels-idx1-ubyte" in str(err.value) and str(tmp_path / "mnist") in str(err.value)


# ---------------------------------------------------------------- checksums


def test_checksum_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "mnist")
    roots = [tmp_path / "mnist"]
    check_fixture(idx.load_mnist(roots))  # fixture sizes differ from the official: not checked
    with pytest.raises(PoisonlabError, match="MD5"):
        idx.load_mnist(roots, verify=True)
    # a file of the official size is checked by default: pretend the fixture size is official
    size = len(idx_bytes(fixture_arrays()["train_labels"]))
    monkeypatch.setitem(idx.OFFICIAL_SIZES, "train-labels-idx1-ubyte", size)
    with pytest.raises(PoisonlabError, match="train-labels-idx1-ubyte.gz: MD5 .* expected a25bea736e30d166cdddb491f175f624"):
        idx.load_mnist(roots)
    check_fixture(idx.load_mnist(roots, verify=False))
    fixture_md5 = hashlib.md5(idx_bytes(fixture_arrays()["train_labels"])).hexdigest()
    monkeypatch.setitem(idx.IDX_SETS["mnist"].md5, "train-labels-idx1-ubyte", fixture_md5)
    check_fixture(idx.load_mnist(roots))


def test_other_sets_file_is_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "fashion-mnist")
    fixture_md5 = hashlib.md5(idx_bytes(fixture_arrays()["train_images"])).hexdigest()
    monkeypatch.setitem(idx.IDX_SETS["mnist"].md5, "train-images-idx3-ubyte", fixture_md5)
    with pytest.raises(PoisonlabError, match="train-images-idx3-ubyte.gz: .*Fashion-MNIST .*it is MNIST's file"):
        idx.load_fashion_mnist([tmp_path / "fashion-mnist"], verify=True)


# ---------------------------------------------------------------- download


@contextlib.contextmanager
def serve_at(folder: Path) -> Iterator[str]:
    with serve(folder) as base:
        yield base + "/files"


def test_download_from_mirror_verifies_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "www" / "files")
    for role, arr in fixture_arrays().items():
        monkeypatch.setitem(idx.IDX_SETS["mnist"].md5, NAMES[role], hashlib.md5(idx_bytes(arr)).hexdigest())
    data_dir = tmp_path / "data"
    with serve_at(tmp_path / "www") as url:
        monkeypatch.setenv("POISONLAB_MIRROR_MNIST", url)  # no trailing slash: added
        split = idx.load_mnist([data_dir / "mnist"], download=True)
    check_fixture(split)
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(n + ".gz" for n in NAMES.values())


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "www" / "files")
    data_dir = tmp_path / "data"
    with serve_at(tmp_path / "www") as url:
        monkeypatch.setitem(idx.MIRRORS, "mnist", url + "/")
        with pytest.raises(PoisonlabError, match="MD5 .* expected 6bbc9ace898e44ae57da46a324031adb") as err:
            idx.load_mnist([data_dir / "mnist"], download=True)
    assert "train-images-idx3-ubyte.gz downloaded from" in str(err.value)
    assert list((data_dir / "mnist").iterdir()) == []


def test_mirror_url_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POISONLAB_MIRROR_FASHION_MNIST", raising=False)
    assert idx.mirror_url("fashion-mnist") == idx.MIRRORS["fashion-mnist"]
    monkeypatch.setenv("POISONLAB_MIRROR_FASHION_MNIST", "http://127.0.0.1:9/fm")
    assert idx.mirror_url("fashion-mnist") == "http://127.0.0.1:9/fm/"
