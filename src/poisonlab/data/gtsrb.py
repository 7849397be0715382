"""GTSRB, the German Traffic Sign Recognition Benchmark (Stallkamp et al., IJCNN 2011).

43 classes; 39,209 training and 12,630 test images in the official layout::

    GTSRB/Final_Training/Images/000NN/*.ppm  + GT-000NN.csv       (one folder per class)
    GTSRB/Final_Test/Images/*.ppm            + GT-final_test.csv  (in Final_Test/ or Final_Test/Images/)

The CSVs are ``;``-separated with columns ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;
Roi.Y2;ClassId``. The set is read from the extracted folder or straight from
``GTSRB*.zip`` / ``GTSRB*.tar.gz`` / ``GTSRB*.tgz`` archives (nothing is extracted to disk);
the top ``GTSRB/`` folder is optional, and several archives in one folder (e.g. the
official training, test and test-labels zips) are merged. Every image is decoded with
Pillow and resized to 32x32 (bilinear): x is float32 (N, 3, 32, 32) in [0, 1].

Hostile input: files of the extracted tree are read only as regular files inside the data
folder (a symbolic link, to a file or a folder, a FIFO or a device is a one-line error),
archive members and files are capped in size (:mod:`.limits`), and an image declaring
more than :data:`.images.GTSRB_MAX_PIXELS` pixels is refused before it is decoded.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PoisonlabError, one_line, shown
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, not_found
from .images import GTSRB_FORMATS, GTSRB_MAX_PIXELS, decode
from .safe_files import check_real_dir, iter_archive, member_label, read_regular_file

SIDE = 32
TEST_CSV = "GT-final_test.csv"
TEST_CSV_KEYS = (f"Final_Test/{TEST_CSV}", f"Final_Test/Images/{TEST_CSV}", TEST_CSV)
ARCHIVE_GLOBS = ("GTSRB*.zip", "GTSRB*.tar.gz", "GTSRB*.tgz")
_TRAIN_CSV = re.compile(r"^Final_Training/Images/(\d{5})/GT-\1\.csv$")
_TRAIN_IMG = re.compile(r"^Final_Training/Images/(\d{5})/[^/]+\.ppm$", re.IGNORECASE)

CLASSES: tuple[str, ...] = (
    "Speed limit (20km/h)",  # 0
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",  # 5
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",  # 10
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",  # 15
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",  # 20
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",  # 25
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",  # 30
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",  # 35
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",  # 40
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)


def member_key(name: str) -> str | None:
    """Normalise a path to ``Final_Training/...``, ``Final_Test/...`` or ``GT-final_test.csv``; None if irrelevant."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    for anchor in ("Final_Training", "Final_Test"):
        if anchor in parts:
            key = "/".join(parts[parts.index(anchor):])
            return key if key.lower().endswith((".ppm", ".csv")) else None
    return TEST_CSV if parts and parts[-1] == TEST_CSV else None


@dataclass
class _Files:
    """Relevant files gathered from one or more sources.

    ``entries`` maps a key to ``(label, bytes)`` for archive members, or ``(path, None)``
    for files on disk, read when needed. The first source to provide a key wins.
    """

    entries: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    root: Path | None = None  # the data folder files on disk must stay in

    def add(self, key: str, label: str, content: bytes | None = None) -> None:
        self.entries.setdefault(key, (label, content))

    def read(self, key: str) -> tuple[str, bytes]:
        label, content = self.entries[key]
        if content is None:
            return label, read_regular_file(label, self.root, label=f"GTSRB: {label}")
        return label, content


# ---------------------------------------------------------------- sources


def _tree_root(folder: Path) -> Path | None:
    """The folder holding Final_Training/Final_Test: ``folder/GTSRB`` or ``folder`` itself."""
    for base in (folder / "GTSRB", folder):
        if (base / "Final_Training").is_dir() or (base / "Final_Test").is_dir():
            return base
    return None


def find_sources(folder: Path) -> list[Path]:
    """The extracted tree (if any) then the GTSRB archives in ``folder``, in that order."""
    out: list[Path] = []
    root = _tree_root(folder)
    if root is not None:
        out.append(root)
    if folder.is_dir():
        archives = {p for pattern in ARCHIVE_GLOBS for p in folder.glob(pattern) if p.is_file()}
        out.extend(sorted(archives))
    return out


def _no_link(path: str) -> None:
    """Refuse a folder of the tree that is a symbolic link (os.walk would silently skip it)."""
    check_real_dir(path, f"GTSRB: {path}")


def _walk_error(e: OSError) -> None:
    raise PoisonlabError(f"GTSRB: cannot list {e.filename}: {e.strerror or e}") from e


def _add_tree(files: _Files, root: Path) -> None:
    for top in ("Final_Training", "Final_Test"):
        if not os.path.lexists(root / top):
            continue
        _no_link(str(root / top))
        for dirpath, dirnames, names in os.walk(root / top, onerror=_walk_error):  # never follows links
            for d in dirnames:
                _no_link(os.path.join(dirpath, d))
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for n in names:
                key = member_key(f"{rel}/{n}")
                if key is not None:
                    files.add(key, os.path.join(dirpath, n))  # links and special files are refused when read
    if os.path.lexists(root / TEST_CSV):
        files.add(TEST_CSV, str(root / TEST_CSV))


def _add_archive(files: _Files, archive: Path) -> None:
    for name, data in iter_archive(archive, lambda n: member_key(n) is not None):
        key = member_key(name)
        if key is not None:
            files.add(key, member_label(archive, name), data)


def _add_source(files: _Files, source: Path) -> None:
    files.sources.append(str(source))
    if source.is_dir():
        if files.root is not None and source != files.root:
            _no_link(str(source))  # the GTSRB/ top folder
        _add_tree(files, source)
    else:
        _add_archive(files, source)


# ---------------------------------------------------------------- CSVs


def parse_csv(data: bytes, label: str) -> tuple[list[str], np.ndarray]:
    """File names and class ids of one GTSRB annotation CSV (``;``-separated, with a header)."""
    try:
        lines = data.decode("utf-8-sig").splitlines()
        rows = [r for r in csv.reader(lines, delimiter=";") if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise PoisonlabError(f"GTSRB: {label} is not a text CSV ({e.reason}); replace it with the official file") from e
    except csv.Error as e:
        raise PoisonlabError(f"GTSRB: {label} is not a valid CSV ({e}); replace it with the official file") from e
    header = [c.strip() for c in rows[0]] if rows else []
    if "Filename" not in header or "ClassId" not in header:
        raise PoisonlabError(f"GTSRB: {label} has no Filename;...;ClassId header; replace it with the official CSV")
    fi, ci = header.index("Filename"), header.index("ClassId")
    names: list[str] = []
    ids: list[int] = []
    for line_no, row in enumerate(rows[1:], start=2):
        try:
            names.append(row[fi].strip())
            ids.append(int(row[ci]))
        except (IndexError, ValueError) as e:
            raise PoisonlabError(f"GTSRB: {label} line {line_no} is malformed ({shown(';'.join(row))}); "
                                 "replace the CSV") from e
        if not 0 <= ids[-1] < len(CLASSES):
            shown_id = ids[-1] if abs(ids[-1]) < 10**12 else "(a huge number)"
            raise PoisonlabError(f"GTSRB: {label} has ClassId {shown_id} outside 0..{len(CLASSES) - 1}")
    return names, np.asarray(ids, dtype=np.int64)


_Index = tuple[list[str], np.ndarray, list[str], np.ndarray]


def _train_csvs(files: _Files) -> list[str]:
    return sorted(k for k in files.entries if _TRAIN_CSV.match(k))


def _test_csv(files: _Files) -> str | None:
    return next((k for k in TEST_CSV_KEYS if k in files.entries), None)


def _index(files: _Files) -> _Index:
    """Image keys and labels of the training and test sets, in CSV order."""
    train_keys: list[str] = []
    train_labels: list[np.ndarray] = []
    for key in _train_csvs(files):
        label, data = files.read(key)
        names, labels = parse_csv(data, label)
        folder = key.rsplit("/", 1)[0]
        train_keys += [f"{folder}/{n}" for n in names]
        train_labels.append(labels)
    test_keys: list[str] = []
    test_labels = np.zeros(0, np.int64)
    key = _test_csv(files)
    if key is not None:
        label, data = files.read(key)
        names, test_labels = parse_csv(data, label)
        test_keys = [f"Final_Test/Images/{n}" for n in names]
    y_train = np.concatenate(train_labels) if train_labels else np.zeros(0, np.int64)
    return train_keys, y_train, test_keys, test_labels


def _classes_without_csv(files: _Files) -> list[str]:
    """Training class folders that hold images but no GT-000NN.csv."""
    class_dirs = {m.group(1) for k in files.entries if (m := _TRAIN_IMG.match(k))}
    csv_dirs = {m.group(1) for k in _train_csvs(files) if (m := _TRAIN_CSV.match(k))}
    return sorted(class_dirs - csv_dirs)


def _complete_index(files: _Files) -> _Index | None:
    """The index when the training and test CSVs and every image they list are present, else None."""
    if not _train_csvs(files) or _test_csv(files) is None or _classes_without_csv(files):
        return None
    index = _index(files)
    return index if all(k in files.entries for k in index[0] + index[2]) else None


def _explain_incomplete(files: _Files) -> PoisonlabError:
    """The one-line error saying what is missing from an incomplete set."""
    where = " + ".join(files.sources)
    if missing := _classes_without_csv(files):
        return PoisonlabError(
            f"GTSRB: Final_Training/Images/{missing[0]}/GT-{missing[0]}.csv is missing in {where}; "
            "use the complete official training set"
        )
    if not _train_csvs(files):
        return PoisonlabError(f"GTSRB: no Final_Training/Images/000NN/GT-000NN.csv found in {where}; use the official layout")
    if _test_csv(files) is None:
        return PoisonlabError(
            f"GTSRB: test labels {TEST_CSV} not found in {where} (looked in Final_Test/ and Final_Test/Images/); "
            "add it from the official GTSRB_Final_Test_GT.zip"
        )
    train_keys, _, test_keys, _ = _index(files)
    gone = [k for k in train_keys + test_keys if k not in files.entries] or ["an image"]
    return PoisonlabError(f"GTSRB: {one_line(gone[0], 300)} is listed in its CSV but missing from {where}; "
                          "use the complete official set")


# ---------------------------------------------------------------- images


def decode_image(data: bytes, label: str) -> np.ndarray:
    """An image file's pixels as uint8 (32, 32, 3), resized bilinearly when it is another size."""
    return decode(data, label, mode="RGB", max_pixels=GTSRB_MAX_PIXELS, formats=GTSRB_FORMATS,
                  what="GTSRB: cannot decode image", fix="replace it with the official file",
                  resize=(SIDE, SIDE))


def _images(files: _Files, keys: list[str]) -> torch.Tensor:
    out = np.empty((len(keys), SIDE, SIDE, 3), dtype=np.uint8)
    for i, key in enumerate(keys):  # decoding is per file; everything after is vectorised
        label, data = files.read(key)
        out[i] = decode_image(data, label)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


# ---------------------------------------------------------------- loader


def load_gtsrb_from(folder: Path) -> DataSplit:
    """Load GTSRB from one folder: the extracted tree first, then its archives until complete."""
    sources = find_sources(folder)
    if not sources:
        raise PoisonlabError(f"GTSRB: no GTSRB folder or GTSRB*.zip/GTSRB*.tar.gz in {folder}")
    files = _Files(root=folder)
    index = None
    for source in sources:
        _add_source(files, source)
        index = _complete_index(files)
        if index is not None:
            break
    if index is None:
        raise _explain_incomplete(files)
    train_keys, y_train, test_keys, y_test = index
    classes = list(CLASSES)
    return DataSplit(
        Dataset(_images(files, train_keys), torch.from_numpy(y_train), classes),
        Dataset(_images(files, test_keys), torch.from_numpy(y_test), list(classes)),
    )


def load_gtsrb(roots: list[Path], download: bool = False) -> DataSplit:
    """GTSRB from the first candidate folder holding the tree or a GTSRB archive (no download)."""
    for folder in roots:
        if find_sources(folder):
            return load_gtsrb_from(folder)
    hint = " (GTSRB has no automatic download; get it from the official benchmark site)" if download else ""
    raise not_found("gtsrb", "GTSRB/Final_Training folder or GTSRB*.zip / GTSRB*.tar.gz", roots, hint)


DATASETS.register("gtsrb")(
    DatasetSpec(
        name="gtsrb",
        description="GTSRB traffic signs, 43 classes, 39,209 train + 12,630 test, resized to 32x32 RGB",
        subdirs=("gtsrb", "GTSRB", ""),
        files=("GTSRB/Final_Training | Final_Training | " + " | ".join(ARCHIVE_GLOBS),),
        load=load_gtsrb,
    )
)
