"""CIFAR-10 loader on tiny batches in the official pickle layout, and the restricted unpickler."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from local_http import serve

from poisonlab.data import cifar10
from poisonlab.data.base import DATASETS, load_dataset
from poisonlab.errors import PoisonlabError

N = 4  # images per tiny batch
NAMES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    monkeypatch.delenv("POISONLAB_MIRROR_CIFAR10", raising=False)


def batch(i: int) -> dict[bytes, object]:
    """Batch ``i`` in the official layout; pixel values encode (batch, image, channel, row, col)."""
    data = np.zeros((N, 3072), np.uint8)
    for k in range(N):
        data[k, 0] = 10 * i + k            # red, row 0, col 0
        data[k, 1024 + 32 * 1 + 1] = 200   # green, row 1, col 1
        data[k, 2048 + 32 * 31 + 31] = 255  # blue, row 31, col 31
    return {
        b"batch_label": f"batch {i}".encode(),
        b"labels": [(i + k) % 10 for k in range(N)],
        b"data": data,
        b"filenames": [f"img_{i}_{k}.png".encode() for k in range(N)],
    }


META = {
    b"label_names": [n.encode() for n in cifar10.CLASSES],
    b"num_cases_per_batch": N,
    b"num_vis": 3072,
}


def write_batches(folder: Path, overrides: dict[str, object] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    content: dict[str, object] = {name: batch(i) for i, name in enumerate(NAMES, start=1)}
    content["batches.meta"] = META
    content.update(overrides or {})
    for name, obj in content.items():
        data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
        (folder / name).write_bytes(data)
    return folder


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` opcodes, as the official (cPickle) batches do."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("ascii") if isinstance(obj, str) else obj
        n = len(raw)
        self.write((b"U" + bytes([n]) if n < 256 else b"T" + struct.pack("<i", n)) + raw)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1 wrote it (py2 strings, numpy.core names)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in data
    return data


def make_archive(folder: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def check_split(split) -> None:
    tr, te = split.train, split.test
    assert tr.x.shape == (5 * N, 3, 32, 32) and tr.x.dtype == torch.float32
    assert te.x.shape == (N, 3, 32, 32) and te.y.dtype == torch.int64
    assert tr.y.tolist() == [(i + k) % 10 for i in range(1, 6) for k in range(N)]
    assert te.y.tolist() == [(6 + k) % 10 for k in range(N)]
    assert tr.x[:, 0, 0, 0].mul(255).round().tolist() == [10 * i + k for i in range(1, 6) for k in range(N)]
    assert te.x[3, 0, 0, 0] == pytest.approx(63 / 255)
    assert (tr.x[:, 1, 1, 1] == 200 / 255).all() and (tr.x[:, 2, 31, 31] == 1.0).all()
    rest = tr.x.sum().item() - tr.x[:, 0, 0, 0].sum().item()
    assert rest == pytest.approx(5 * N * (200 / 255 + 1.0), rel=1e-6)  # every other pixel is 0
    assert tr.classes == list(cifar10.CLASSES)


def test_folder(tmp_path: Path) -> None:
    write_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    check_split(load_dataset("cifar10", tmp_path))


def test_python2_style_batches(tmp_path: Path) -> None:
    overrides = {name: py2_pickle(batch(i)) for i, name in enumerate(NAMES, start=1)}
    assert b"cnumpy.core.multiarray\n_reconstruct" in overrides["test_batch"]
    overrides["batches.meta"] = py2_pickle(META)
    write_batches(tmp_path, overrides)
    check_split(cifar10.load_cifar10([tmp_path]))


def test_batches_folder_itself(tmp_path: Path) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py")
    check_split(load_dataset("cifar10", tmp_path))
    assert DATASETS.get("cifar10").present(tmp_path) == (True, folder)


def test_archive_read_in_place(tmp_path: Path) -> None:
    make_archive(write_batches(tmp_path / "src"), tmp_path / "data" / "cifar-10-python.tar.gz")
    check_split(cifar10.load_cifar10([tmp_path / "data"]))
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-python.tar.gz"]


def test_class_names_from_meta(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(10)]
    write_batches(tmp_path, {"batches.meta": {b"label_names": [n.encode() for n in names]}})
    assert cifar10.load_cifar10([tmp_path]).train.classes == names


class _System:
    """Unpickling this calls os.system(<cmd>)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /nonexistent-marker')",))


@pytest.mark.parametrize("where", ["data_batch_3", "batches.meta"])
def test_malicious_pickle_refused_and_not_run(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    evil = batch(3)
    evil[b"labels"] = _System(f"touch {marker}")  # type: ignore[assignment]
    write_batches(tmp_path / "cifar10", {where: evil})
    with pytest.raises(PoisonlabError, match=r"refused to unpickle (posix|os|nt)\.system") as err:
        load_dataset("cifar10", tmp_path)
    assert where in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_eval_pickle_refused(tmp_path: Path) -> None:
    write_batches(tmp_path, {"test_batch": pickle.dumps({b"data": _Eval()}, protocol=2)})
    with pytest.raises(PoisonlabError, match=r"refused to unpickle (__builtin__|builtins)\.eval"):
        cifar10.load_cifar10([tmp_path])


def test_malicious_pickle_in_archive_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = write_batches(tmp_path / "src", {"test_batch": pickle.dumps([_System(f"touch {marker}")], protocol=2)})
    make_archive(src, tmp_path / "data" / "cifar-10-python.tar.gz")
    with pytest.raises(PoisonlabError, match="refused to unpickle"):
        cifar10.load_cifar10([tmp_path / "data"])
    assert not marker.exists()


def test_unpickler_allows_exactly_the_format() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = cifar10.unpickle_batch(pickle.dumps({b"data": arr, b"labels": [1, 2, 3]}, protocol=2), "x")
    assert np.array_equal(out["data"], arr) and out["labels"] == [1, 2, 3]
    for obj in (np.float64(1.0), {1, 2}, bytearray(b"x")):  # harmless but not in the format
        with pytest.raises(PoisonlabError, match="refused to unpickle"):
            cifar10.unpickle_batch(pickle.dumps(obj, protocol=2), "x")


@pytest.mark.parametrize(
    "override, match",
    [
        ({"data": np.zeros((N, 3071), np.uint8)}, r"shape \(N, 3072\)"),
        ({"data": np.zeros((N, 3072), np.float32)}, "uint8"),
        ({"labels": [0, 1, 2]}, "3 labels for 4 images"),
        ({"labels": [0, 1, 2, 10]}, "label 10 outside 0..9"),
    ],
)
def test_invalid_batch_contents(tmp_path: Path, override: dict, match: str) -> None:
    bad = batch(2)
    bad.update({k.encode(): v for k, v in override.items()})
    write_batches(tmp_path, {"data_batch_2": bad})
    with pytest.raises(PoisonlabError, match=match) as err:
        cifar10.load_cifar10([tmp_path])
    assert "data_batch_2" in str(err.value)


def test_truncated_and_missing_batches(tmp_path: Path) -> None:
    folder = write_batches(tmp_path)
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(PoisonlabError, match="test_batch: corrupt pickle"):
        cifar10.load_cifar10([folder])
    (folder / "data_batch_4").unlink()
    with pytest.raises(PoisonlabError, match="data_batch_4 missing"):
        cifar10.load_cifar10([folder])


def test_nothing_found_mentions_download(tmp_path: Path) -> None:
    with pytest.raises(PoisonlabError, match="--download"):
        cifar10.load_cifar10([tmp_path])


# ---------------------------------------------------------------- download




def test_download_verifies_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_archive(write_batches(tmp_path / "src"), tmp_path / "www" / "cifar-10-python.tar.gz")
    target = tmp_path / "data" / "cifar10"
    with serve(tmp_path / "www") as url:
        monkeypatch.setenv("POISONLAB_MIRROR_CIFAR10", url)
        with pytest.raises(PoisonlabError, match=f"expected md5 {cifar10.ARCHIVE_MD5}"):
            cifar10.load_cifar10([target], download=True)
        assert list(target.iterdir()) == []  # rejected download left nothing
        monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
        check_split(cifar10.load_cifar10([target], download=True))
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()
    check_split(cifar10.load_cifar10([target]))  # second time: from the extracted folder, no network


def test_official_url_default() -> None:
    assert cifar10.archive_url() == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
