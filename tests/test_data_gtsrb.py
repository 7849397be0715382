"""GTSRB loader on a tiny tree in the official layout: folder, .zip and .tar.gz."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.data import gtsrb
from poisonlab.data.base import DATASETS, load_dataset
from poisonlab.errors import PoisonlabError

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def pattern(w: int, h: int) -> np.ndarray:
    """A deterministic non-constant RGB image (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 7 % 256, yy * 5 % 256, (xx * yy) % 256], axis=-1).astype(np.uint8)


def const(w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


# (class folder, file, pixels, class id) in CSV order
TRAIN = [
    ("00000", "00000_00000.ppm", const(5, 7, (10, 20, 30)), 0),
    ("00000", "00000_00001.ppm", const(40, 33, (200, 100, 0)), 0),
    ("00001", "00001_00000.ppm", pattern(32, 32), 1),
    ("00014", "00014_00000.ppm", pattern(29, 31), 14),
]
# test CSV order deliberately differs from file-name order
TEST = [
    ("00001.ppm", const(32, 32, (255, 255, 255)), 39),
    ("00000.ppm", const(17, 13, (0, 0, 255)), 14),
    ("00002.ppm", pattern(35, 35), 0),
]


def _csv(rows: list[tuple[str, np.ndarray, int]]) -> str:
    lines = [HEADER] + [f"{f};{a.shape[1]};{a.shape[0]};1;1;{a.shape[1] - 1};{a.shape[0] - 1};{c}" for f, a, c in rows]
    return "\n".join(lines) + "\n"


def _ppm(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, format="PPM")


def make_tree(root: Path, top: bool = True, test_csv_in_images: bool = False) -> Path:
    """Write the fixture in the official layout under ``root`` (with a ``GTSRB/`` top folder if ``top``)."""
    base = root / "GTSRB" if top else root
    train = base / "Final_Training" / "Images"
    for folder in sorted({t[0] for t in TRAIN}):
        rows = [(f, a, c) for d, f, a, c in TRAIN if d == folder]
        for f, a, _ in rows:
            _ppm(train / folder / f, a)
        (train / folder / f"GT-{folder}.csv").write_text(_csv(rows))
    images = base / "Final_Test" / "Images"
    for f, a, _ in TEST:
        _ppm(images / f, a)
    # the official test-images zip ships a label-less CSV under this other name: must be ignored
    (images / "GT-final_test.test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n")
    csv_dir = images if test_csv_in_images else base / "Final_Test"
    (csv_dir / "GT-final_test.csv").write_text(_csv(TEST))
    return root


def _files(root: Path) -> list[tuple[Path, str]]:
    return [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def make_zip(tree: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path, name in _files(tree):
            zf.write(path, name)
    return archive


def make_tgz(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    return archive


def expected(arr: np.ndarray) -> torch.Tensor:
    if arr.shape[:2] != (32, 32):
        arr = np.asarray(Image.fromarray(arr, "RGB").resize((32, 32), Image.Resampling.BILINEAR))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def check_split(split) -> None:
    tr, te = split.train, split.test
    assert tr.x.shape == (4, 3, 32, 32) and tr.x.dtype == torch.float32
    assert te.x.shape == (3, 3, 32, 32)
    assert tr.y.tolist() == [0, 0, 1, 14] and te.y.tolist() == [39, 14, 0]
    # uniform images keep their exact colour whatever the resize
    assert torch.equal(tr.x[0], torch.tensor([10, 20, 30]).float().div(255).view(3, 1, 1).expand(3, 32, 32))
    assert torch.equal(tr.x[1], torch.tensor([200, 100, 0]).float().div(255).view(3, 1, 1).expand(3, 32, 32))
    assert torch.equal(te.x[0], torch.ones(3, 32, 32))
    assert torch.equal(te.x[1, 2], torch.ones(32, 32)) and te.x[1, :2].sum() == 0
    # a 32x32 image passes through untouched, others are bilinear-resized
    assert torch.equal(tr.x[2], expected(TRAIN[2][2]))
    assert torch.equal(tr.x[3], expected(TRAIN[3][2])) and torch.equal(te.x[2], expected(TEST[2][1]))
    assert tr.classes[14] == "Stop" and tr.classes[39] == "Keep left" and len(tr.classes) == 43


def test_class_names() -> None:
    assert len(gtsrb.CLASSES) == 43 and len(set(gtsrb.CLASSES)) == 43
    assert gtsrb.CLASSES[0] == "Speed limit (20km/h)" and gtsrb.CLASSES[13] == "Yield"
    assert gtsrb.CLASSES[42] == "End of no passing by vehicles over 3.5 metric tons"


@pytest.mark.parametrize("top", [True, False])
@pytest.mark.parametrize("test_csv_in_images", [False, True])
def test_folder(tmp_path: Path, top: bool, test_csv_in_images: bool) -> None:
    make_tree(tmp_path / "gtsrb", top, test_csv_in_images)
    check_split(load_dataset("gtsrb", tmp_path))


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz"])
@pytest.mark.parametrize("top", [True, False])
def test_archive_read_in_place(tmp_path: Path, kind: str, top: bool) -> None:
    tree = make_tree(tmp_path / "tree", top)
    data = tmp_path / "data"
    data.mkdir()
    archive = data / f"GTSRB-mini.{kind}"
    (make_zip if kind == "zip" else make_tgz)(tree, archive)
    assert DATASETS.get("gtsrb").present(data) == (True, data)  # found through the GTSRB*.<ext> glob
    before = sorted(p.name for p in data.iterdir())
    check_split(gtsrb.load_gtsrb([data]))
    assert sorted(p.name for p in data.iterdir()) == before  # nothing extracted


def test_official_three_zips_are_merged(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    gt = tree / "GTSRB" / "Final_Test" / "GT-final_test.csv"
    data = tmp_path / "data"
    data.mkdir()
    with zipfile.ZipFile(data / "GTSRB_Final_Training_Images.zip", "w") as zf:
        for path, name in _files(tree):
            if "Final_Training" in name:
                zf.write(path, name)
    with zipfile.ZipFile(data / "GTSRB_Final_Test_Images.zip", "w") as zf:
        for path, name in _files(tree):
            if "Final_Test/Images" in name:
                zf.write(path, name)
    with zipfile.ZipFile(data / "GTSRB_Final_Test_GT.zip", "w") as zf:
        zf.write(gt, "GT-final_test.csv")
    check_split(gtsrb.load_gtsrb([data]))


def test_missing_test_csv(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "GTSRB" / "Final_Test" / "GT-final_test.csv").unlink()
    with pytest.raises(PoisonlabError, match="GT-final_test.csv not found"):
        gtsrb.load_gtsrb([tmp_path])


def test_missing_class_csv(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "GTSRB" / "Final_Training" / "Images" / "00014" / "GT-00014.csv").unlink()
    with pytest.raises(PoisonlabError, match="GT-00014.csv is missing"):
        gtsrb.load_gtsrb([tmp_path])


def test_unreadable_image_named(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    bad = tree / "GTSRB" / "Final_Training" / "Images" / "00001" / "00001_00000.ppm"
    bad.write_bytes(b"P6\n32 32\n255\n" + b"\x00" * 10)  # truncated pixel data
    with pytest.raises(PoisonlabError, match="00001_00000.ppm") as err:
        gtsrb.load_gtsrb([tree])
    assert "cannot decode" in str(err.value)
    make_zip(tree, tmp_path / "GTSRB.zip")
    with pytest.raises(PoisonlabError, match=r"GTSRB\.zip:GTSRB/Final_Training/Images/00001/00001_00000\.ppm"):
        gtsrb.load_gtsrb([tmp_path])


def test_listed_image_missing(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "GTSRB" / "Final_Test" / "Images" / "00002.ppm").unlink()
    with pytest.raises(PoisonlabError, match="Final_Test/Images/00002.ppm is listed"):
        gtsrb.load_gtsrb([tmp_path])


def test_bad_class_id(tmp_path: Path) -> None:
    make_tree(tmp_path)
    csv = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00001" / "GT-00001.csv"
    csv.write_text(csv.read_text().replace(";1\n", ";43\n"))
    with pytest.raises(PoisonlabError, match="GT-00001.csv has ClassId 43"):
        gtsrb.load_gtsrb([tmp_path])


def test_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(PoisonlabError, match="--data-dir") as err:
        gtsrb.load_gtsrb([tmp_path / "a", tmp_path / "b"])
    assert str(tmp_path / "b") in str(err.value) and "\n" not in str(err.value)
