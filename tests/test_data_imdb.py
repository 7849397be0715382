"""IMDB loader on a tiny aclImdb tree in the official layout: folder and .tar.gz read in place."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonlab.data import imdb
from poisonlab.data.base import DATASETS, load_dataset
from poisonlab.errors import PoisonlabError

# (split, label, file name, bytes), deliberately not in the expected row order
REVIEWS = [
    ("train", "pos", "10_9.txt", b"Great film.<br /><br />Loved it."),
    ("train", "pos", "2_7.txt", "Caf\u00e9 scene was fine".encode()),
    ("train", "pos", "0_10.txt", b"Best ever"),
    ("train", "neg", "12_4.txt", b"Meh<br />meh"),
    ("train", "neg", "3_1.txt", b"Awful \xff bytes"),
    ("train", "neg", "1_2.txt", b"Bad"),
    ("test", "neg", "0_3.txt", b"Dull"),
    ("test", "pos", "7_8.txt", b"Nice<BR/>work"),
    ("test", "pos", "11_10.txt", b"Superb"),
]
# files of the official distribution that must be ignored
EXTRA = {
    "README": b"Large Movie Review Dataset v1.0",
    "imdb.vocab": b"the\nand\n",
    "train/labeledBow.feat": b"9 0:9\n",
    "train/urls_pos.txt": b"http://www.imdb.com/title/tt0000001/usercomments\n",
    "train/unsup/0_0.txt": b"unlabelled, rating 0 would be invalid in pos/neg",
    "train/pos/.DS_Store": b"\x00\x01",
}


def make_tree(root: Path) -> Path:
    """``root/aclImdb/...`` with the reviews and the ignored extras; returns ``root``."""
    base = root / "aclImdb"
    for split, label, name, data in REVIEWS:
        (base / split / label).mkdir(parents=True, exist_ok=True)
        (base / split / label / name).write_bytes(data)
    for rel, data in EXTRA.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return root


def make_tgz(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "aclImdb", arcname="aclImdb")
    return archive


def add_member(archive: Path, name: str, data: bytes = b"x") -> None:
    """Rewrite ``archive`` with one more regular-file member (GNU format keeps raw name bytes)."""
    with tarfile.open(archive, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for m, content in members:
            tar.addfile(m, io.BytesIO(content) if content is not None else None)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def check_split(split) -> None:
    tr, te = split.train, split.test
    assert tr.x.shape == (6, 0) and te.x.shape == (3, 0) and tr.x.dtype == torch.float32
    assert tr.classes == ["neg", "pos"] == te.classes
    # sorted by label folder (neg first), then numeric ID (2 before 10)
    assert tr.y.tolist() == [0, 0, 0, 1, 1, 1] and te.y.tolist() == [0, 1, 1]
    assert tr.meta["id"].tolist() == [1, 3, 12, 0, 2, 10] and te.meta["id"].tolist() == [0, 7, 11]
    assert tr.meta["rating"].tolist() == [2, 1, 4, 10, 7, 9] and te.meta["rating"].tolist() == [3, 8, 10]
    assert tr.meta["id"].dtype == np.int64 and tr.meta["rating"].dtype == np.int64
    text = tr.meta["text"]
    assert text.dtype == object and text.shape == (6,)
    assert text.tolist() == [
        "Bad", "Awful \ufffd bytes", "Meh meh", "Best ever", "Caf\u00e9 scene was fine", "Great film.  Loved it.",
    ]
    assert te.meta["text"].tolist() == ["Dull", "Nice work", "Superb"]
    assert tr.subset(tr.y == 1).meta["text"].tolist()[-1] == "Great film.  Loved it."


def test_folder(tmp_path: Path) -> None:
    make_tree(tmp_path / "imdb")
    assert DATASETS.get("imdb").present(tmp_path) == (True, tmp_path / "imdb")
    check_split(load_dataset("imdb", tmp_path))


@pytest.mark.parametrize("name", ["aclImdb-labeled.tar.gz", "aclImdb_v1.tar.gz"])
def test_archive_read_in_place(tmp_path: Path, name: str) -> None:
    tree = make_tree(tmp_path / "tree")
    data = tmp_path / "data"
    data.mkdir()
    make_tgz(tree, data / name)
    assert DATASETS.get("imdb").present(data) == (True, data)
    check_split(imdb.load_imdb([data]))
    assert [p.name for p in data.iterdir()] == [name]  # nothing extracted


def test_folder_wins_over_archive(tmp_path: Path) -> None:
    make_tree(tmp_path)
    make_tgz(tmp_path, tmp_path / "aclImdb-labeled.tar.gz")
    (tmp_path / "aclImdb" / "test" / "neg" / "0_3.txt").write_bytes(b"Edited")
    assert imdb.load_imdb([tmp_path]).test.meta["text"][0] == "Edited"


def test_missing_label_folder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    for f in (tmp_path / "aclImdb" / "test" / "pos").iterdir():
        f.unlink()
    (tmp_path / "aclImdb" / "test" / "pos").rmdir()
    with pytest.raises(PoisonlabError, match=r"imdb: .*aclImdb/test/pos not found") as err:
        imdb.load_imdb([tmp_path])
    assert "\n" not in str(err.value)


def test_missing_label_folder_in_archive(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    for f in (tree / "aclImdb" / "train" / "neg").iterdir():
        f.unlink()
    make_tgz(tree, tmp_path / "aclImdb_v1.tar.gz")
    with pytest.raises(PoisonlabError, match=r"no reviews in aclImdb/train/neg/ of .*aclImdb_v1\.tar\.gz"):
        imdb.load_imdb([tmp_path])


def test_unparsable_name(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "aclImdb" / "train" / "neg" / "review.txt").write_bytes(b"?")
    with pytest.raises(PoisonlabError, match=r"train/neg/review\.txt: file name 'review\.txt' is not ID_RATING\.txt"):
        imdb.load_imdb([tmp_path])


def test_rating_outside_label(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "aclImdb" / "test" / "pos" / "5_3.txt").write_bytes(b"?")
    with pytest.raises(PoisonlabError, match=r"5_3\.txt: rating 3 does not belong in pos/ \(ratings 7-10\)"):
        imdb.load_imdb([tmp_path])


def test_duplicate_id(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "aclImdb" / "train" / "pos" / "2_8.txt").write_bytes(b"again")
    with pytest.raises(PoisonlabError, match=r"review ID 2 appears twice in aclImdb/train/pos/"):
        imdb.load_imdb([tmp_path])


def test_non_utf8_member_name(tmp_path: Path) -> None:
    archive = make_tgz(make_tree(tmp_path / "tree"), tmp_path / "aclImdb-labeled.tar.gz")
    add_member(archive, "aclImdb/train/pos/\udcff_7.txt")  # the raw byte 0xff
    with pytest.raises(PoisonlabError, match=r"aclImdb-labeled\.tar\.gz:aclImdb/train/pos/.*not valid UTF-8"):
        imdb.load_imdb([tmp_path])


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/aclImdb/train/pos/1_7.txt"])
def test_unsafe_member(tmp_path: Path, member: str) -> None:
    archive = make_tgz(make_tree(tmp_path / "tree"), tmp_path / "aclImdb-labeled.tar.gz")
    add_member(archive, member)
    with pytest.raises(PoisonlabError, match=r"unsafe archive .*aclImdb-labeled\.tar\.gz: member") as err:
        imdb.load_imdb([tmp_path])
    assert member in str(err.value)


def test_nothing_found(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(PoisonlabError, match="--data-dir") as err:
        imdb.load_imdb([a, b])
    msg = str(err.value)
    assert f"searched {a}, {b}" in msg and "aclImdb_v1.tar.gz" in msg and "\n" not in msg
    assert not DATASETS.get("imdb").downloadable
    with pytest.raises(PoisonlabError, match="no automatic download"):
        imdb.load_imdb([a], download=True)
