"""IMDB Large Movie Review Dataset (Maas et al., "Learning Word Vectors for Sentiment
Analysis", ACL 2011): 25,000 training and 25,000 test reviews, positive or negative.

Official layout::

    aclImdb/train/{neg,pos}/ID_RATING.txt
    aclImdb/test/{neg,pos}/ID_RATING.txt

read from the ``aclImdb/`` folder or straight from ``aclImdb-labeled.tar.gz`` /
``aclImdb_v1.tar.gz`` (streamed, nothing is extracted to disk; member names and sizes are
checked with :mod:`.archives`). Files of the folder are read only as regular files inside
the data folder: links, FIFOs, devices and sub-folders in a label folder are refused.
``train/unsup/``, the ``*Bow.feat`` files, ``imdb.vocab`` and the URL lists are ignored.
The folder is used when present, else the first archive.

Texts are decoded as UTF-8 (undecodable bytes become U+FFFD) and each ``<br />`` line
break becomes one space. Ratings follow the official rule: 1-4 in ``neg/``, 7-10 in
``pos/``. Rows are sorted by label folder (``neg`` first) then numeric ID.

Text data sets carry no tensor features: ``x`` is ``torch.zeros((N, 0))``, the texts are
in ``meta["text"]`` (object array of str) next to ``meta["rating"]`` and ``meta["id"]``
(int64), and a text pipeline (tokeniser + embedding or bag of words) featurises them.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import PoisonlabError, one_line, shown
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, not_found
from .safe_files import check_real_dir, iter_archive, member_label, read_regular_file

FOLDER = "aclImdb"
ARCHIVES: tuple[str, ...] = ("aclImdb-labeled.tar.gz", "aclImdb_v1.tar.gz")
SPLITS: tuple[str, ...] = ("train", "test")
CLASSES: tuple[str, ...] = ("neg", "pos")
RATINGS: dict[str, range] = {"neg": range(1, 5), "pos": range(7, 11)}
_NAME = re.compile(r"^([0-9]{1,18})_([0-9]{1,2})\.txt$")  # ASCII digits, fits int64
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)

# (split, label) -> list of (id, rating, text)
_Reviews = dict[tuple[str, str], list[tuple[int, int, str]]]


def clean_text(data: bytes) -> str:
    """A review's text: UTF-8 with replacement characters, ``<br />`` turned into a space."""
    return _BREAK.sub(" ", data.decode("utf-8", errors="replace"))


def parse_name(name: str, label: str, where: str) -> tuple[int, int]:
    """``(id, rating)`` from a file name ``ID_RATING.txt`` in the ``label`` folder; ``where`` names it in errors."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PoisonlabError(
            f"imdb: {where}: the file name is not valid UTF-8 ({shown(name)}); use the official aclImdb set"
        ) from None
    m = _NAME.match(name)
    if m is None:
        raise PoisonlabError(
            f"imdb: {where}: file name {shown(name)} is not ID_RATING.txt (e.g. 123_8.txt); "
            "use the official aclImdb layout"
        )
    review_id, rating = int(m.group(1)), int(m.group(2))
    if rating not in RATINGS[label]:
        allowed = RATINGS[label]
        raise PoisonlabError(
            f"imdb: {where}: rating {rating} does not belong in {label}/ (ratings {allowed.start}-{allowed.stop - 1}); "
            "use the official aclImdb set"
        )
    return review_id, rating


def member_key(name: str) -> tuple[str, str, str] | None:
    """``(split, label, file name)`` for a review at ``[aclImdb/]{train,test}/{neg,pos}/NAME``, else None."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if parts and parts[0] == FOLDER:
        parts = parts[1:]
    if len(parts) == 3 and parts[0] in SPLITS and parts[1] in CLASSES:
        return parts[0], parts[1], parts[2]
    return None


def _add(reviews: _Reviews, split: str, label: str, name: str, data: bytes, where: str) -> None:
    if name.startswith("."):  # hidden files (e.g. macOS ._ resource forks) are not reviews
        return
    review_id, rating = parse_name(name, label, where)
    reviews.setdefault((split, label), []).append((review_id, rating, clean_text(data)))


def _read_folder(folder: Path, root: Path) -> _Reviews:
    reviews: _Reviews = {}
    for split in SPLITS:
        for label in CLASSES:
            sub = folder / split / label
            if not sub.is_dir():
                raise PoisonlabError(
                    f"imdb: {sub} not found; {folder} must hold train/neg, train/pos, test/neg and test/pos "
                    "(official aclImdb layout)"
                )
            for linked in (folder, folder / split, sub):  # a linked folder is refused, not followed
                if linked != root:
                    check_real_dir(linked, f"imdb: {linked}")
            try:
                with os.scandir(sub) as it:
                    entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
            except OSError as e:
                raise PoisonlabError(f"imdb: cannot list {sub}: {e.strerror or e}") from e
            for entry in entries:  # links, folders, FIFOs and devices are refused by the read
                where = entry.path if entry.name.isprintable() else one_line(entry.path, 400)  # any byte but / and NUL
                data = read_regular_file(entry.path, root, label=f"imdb: {where}")
                _add(reviews, split, label, entry.name, data, where)
    return reviews


def _read_archive(archive: Path) -> _Reviews:
    reviews: _Reviews = {}
    for member, data in iter_archive(archive, lambda n: member_key(n) is not None):
        key = member_key(member)
        if key is not None:
            _add(reviews, key[0], key[1], key[2], data, member_label(archive, member))
    return reviews


def _dataset(reviews: _Reviews, split: str, source: Path) -> Dataset:
    rows: list[tuple[int, int, int, str]] = []  # (label, id, rating, text)
    for y, label in enumerate(CLASSES):
        found = reviews.get((split, label), [])
        if not found:
            raise PoisonlabError(
                f"imdb: no reviews in {FOLDER}/{split}/{label}/ of {source}; use the complete official aclImdb set"
            )
        found.sort(key=lambda r: r[0])
        for (a, _, _), (b, _, _) in itertools.pairwise(found):
            if a == b:
                raise PoisonlabError(
                    f"imdb: review ID {a} appears twice in {FOLDER}/{split}/{label}/ of {source}; "
                    "use the official aclImdb set"
                )
        rows += [(y, review_id, rating, text) for review_id, rating, text in found]
    meta = {
        "text": np.array([r[3] for r in rows], dtype=object),
        "rating": np.array([r[2] for r in rows], dtype=np.int64),
        "id": np.array([r[1] for r in rows], dtype=np.int64),
    }
    y = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    return Dataset(torch.zeros((len(rows), 0)), y, list(CLASSES), meta)


def find_source(folder: Path) -> Path | None:
    """The ``aclImdb/`` folder in ``folder``, else the first official archive there, else None."""
    if (folder / FOLDER).is_dir():
        return folder / FOLDER
    return next((folder / a for a in ARCHIVES if (folder / a).is_file()), None)


def load_imdb_from(source: Path, root: Path | None = None) -> DataSplit:
    """IMDB from an ``aclImdb/`` folder or an archive holding it; files must stay in ``root``
    (default: ``source``), the data folder."""
    reviews = _read_folder(source, root or source) if source.is_dir() else _read_archive(source)
    return DataSplit(_dataset(reviews, "train", source), _dataset(reviews, "test", source))


def load_imdb(roots: list[Path], download: bool = False) -> DataSplit:
    """IMDB reviews, 25,000 + 25,000, from the first candidate folder holding ``aclImdb/`` or an archive."""
    for folder in roots:
        source = find_source(folder)
        if source is not None:
            return load_imdb_from(source, folder)
    hint = " (IMDB has no automatic download; get aclImdb_v1.tar.gz from the Stanford AI Lab site)" if download else ""
    raise not_found("imdb", f"{FOLDER}/ folder or {' / '.join(ARCHIVES)}", roots, hint)


DATASETS.register("imdb")(
    DatasetSpec(
        name="imdb",
        description="IMDB movie reviews (Maas et al. 2011), 25,000 train + 25,000 test, neg/pos; "
        "texts in meta['text'], no tensor features",
        subdirs=("imdb", "IMDB", ""),
        files=(f"{FOLDER}/ | " + " | ".join(ARCHIVES),),
        load=load_imdb,
        downloadable=False,
    )
)
