"""Bring-your-own-data readers (image-folder, csv, parquet, npz), from_arrays, register_dataset and load_data:
exact pixels, features, classes and meta on tiny fixtures, and a one-line error for every bad input."""
from __future__ import annotations

import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    class_tree,
    npy_bytes,
    npy_of,
    npz_of,
    png_header_only,
    write_image,
)
from hostile import assert_one_line_error, run_cli

from poisonlab.config import load_config
from poisonlab.data import from_arrays, load_data, register_dataset, unregister_dataset
from poisonlab.data.table import build_split, read_csv
from poisonlab.errors import PoisonlabError


def err(text: str) -> str:
    """``text`` as a literal regex (error messages hold brackets, dots and paths)."""
    return re.escape(text)


def image_folder(path: Path, **options) -> object:
    return load_data({"name": "image-folder", "path": str(path), "options": options})


def csv_data(path: Path, **options) -> object:
    return load_data({"name": "csv", "path": str(path), "options": options})


def npz_data(path: Path, **options) -> object:
    return load_data({"name": "npz", "path": str(path), "options": options})


# ---------------------------------------------------------------- image folders


def test_png_is_resized_bilinearly_to_exact_pixels(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_image(root / "train" / "a" / "z.png", [[0, 200], [200, 0]])
    write_image(root / "train" / "b" / "w.png", [[10, 10], [10, 10]])
    write_image(root / "test" / "a" / "t.png", [[0, 0], [0, 0]])
    write_image(root / "test" / "b" / "t.png", [[255, 255], [255, 255]])
    split = image_folder(root, image_size=4)
    # Pillow's bilinear filter, by hand: taps at 1/4 and 3/4 between the two source pixels, edges clamped
    expected = torch.tensor([[0, 50, 150, 200], [50, 75, 125, 150], [150, 125, 75, 50], [200, 150, 50, 0]],
                            dtype=torch.float32) / 255
    assert split.train.x.shape == (2, 1, 4, 4) and split.train.x.dtype == torch.float32
    assert torch.equal(split.train.x[0, 0], expected)
    assert torch.equal(split.train.x[1], torch.full((1, 4, 4), 10 / 255))
    assert split.train.classes == ["a", "b"] and split.train.y.tolist() == [0, 1] and split.test.y.tolist() == [0, 1]
    assert torch.equal(split.test.x[1], torch.ones(1, 4, 4))


def test_channels_default_option_and_conversion(tmp_path: Path) -> None:
    gray = class_tree(tmp_path / "gray", {"a": 2, "b": 2})
    assert image_folder(gray, image_size=2).train.x.shape[1] == 1  # every image single-channel
    three = image_folder(gray, image_size=2, channels=3).train.x
    assert three.shape[1] == 3 and torch.equal(three[:, 0], three[:, 2])
    write_image(gray / "b" / "red.png", np.array([[[255, 0, 0]] * 2] * 2))  # one RGB image: all become RGB
    mixed = image_folder(gray, image_size=2, test_fraction=0.4)
    assert mixed.train.x.shape[1] == 3
    reds = torch.cat([mixed.train.x, mixed.test.x])
    assert any(torch.equal(img[:, 0, 0], torch.tensor([1.0, 0.0, 0.0])) for img in reds)
    one = image_folder(gray, image_size=2, channels=1, test_fraction=0.4)
    luma = torch.cat([one.train.x, one.test.x])
    assert luma.shape[1] == 1 and (luma == 76 / 255).any()  # ITU-R 601 luma of pure red: 255 * 299/1000


def test_class_names_labels_and_seeded_stratified_split(tmp_path: Path) -> None:
    root = class_tree(tmp_path / "d", {"zebra": 5, "ant": 5, "mole": 10})
    (root / "ant" / "notes.txt").write_text("not an image")  # ignored: not .png/.jpg/.jpeg
    write_image(root / "ant" / ".hidden.png", [[1]])  # ignored: hidden
    write_image(root / "mole" / "deeper" / "x.png", np.full((2, 2), 99))  # nested inside a class: included
    (root / ".git").mkdir()
    split = image_folder(root, image_size=2)
    assert split.train.classes == ["ant", "mole", "zebra"]
    assert torch.bincount(split.test.y).tolist() == [1, 2, 1]  # round(0.2 * n) per class: 1, 2.2 -> 2, 1
    assert torch.bincount(split.train.y).tolist() == [4, 9, 4]
    again = image_folder(root, image_size=2)
    other = image_folder(root, image_size=2, split_seed=5)
    assert torch.equal(again.test.x, split.test.x)
    assert not torch.equal(other.test.x, split.test.x)
    values = sorted(round(v * 255) for v in torch.cat([split.train.x, split.test.x])[:, 0, 0, 0].tolist())
    assert values == sorted([*range(5), *range(10, 20), 99, *range(20, 25)])  # ant 0.., mole 10.., zebra 20..


def test_jpeg_is_decoded_lossy(tmp_path: Path) -> None:
    for cls, value in (("a", 40), ("b", 200)):
        for k in range(2):
            write_image(tmp_path / "j" / cls / f"{k}.jpg", np.full((8, 8, 3), value), fmt="JPEG")
    split = image_folder(tmp_path / "j", image_size=8, test_fraction=0.5)
    x = torch.cat([split.train.x, split.test.x])
    assert x.shape == (4, 3, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert (x[torch.cat([split.train.y, split.test.y]) == 1] * 255 - 200).abs().max() <= 3


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar", "w")])
def test_archive_reads_as_the_folder(tmp_path: Path, suffix: str, mode: str) -> None:
    root = tmp_path / "CIFAR-10-images"
    class_tree(root / "train", {"cat": 3, "dog": 3})
    class_tree(root / "test", {"cat": 1, "dog": 1}, start=50)
    archive = tmp_path / f"imgs{suffix}"
    with tarfile.open(archive, mode) as tar:
        for f in sorted(root.rglob("*.png"), reverse=True):  # archive order differs from the folder's
            tar.add(f, arcname=str(f.relative_to(tmp_path)))
    folder, packed = image_folder(root, image_size=2), image_folder(archive, image_size=2)
    assert packed.train.classes == folder.train.classes == ["cat", "dog"]
    for a, b in ((folder.train, packed.train), (folder.test, packed.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(packed.train) == 6 and len(packed.test) == 2


def test_image_folder_errors_are_one_line(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    write_image(flat / "a.png", [[1]])
    with pytest.raises(PoisonlabError, match=err(f"image-folder: {flat}: no class sub-folders (it holds 1 images "
                                                 f"directly, e.g. a.png); put each class's images in its own folder")):
        image_folder(flat)
    root = class_tree(tmp_path / "d", {"a": 2, "b": 2})
    (root / "c").mkdir()
    with pytest.raises(PoisonlabError, match=err(f"image-folder: {root / 'c'}: no .png/.jpg/.jpeg images in this "
                                                 "class folder; add images or remove the folder")):
        image_folder(root)
    (root / "c" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(PoisonlabError, match=err(f"image-folder: cannot decode image {root / 'c' / 'bad.png'} (")):
        image_folder(root)
    (root / "c" / "bad.png").write_bytes(png_header_only(5000, 5000))
    with pytest.raises(PoisonlabError, match=err("bad.png: it declares 5000x5000 pixels, more than the 16,777,216 "
                                                 "allowed; replace or remove the file")):
        image_folder(root)
    one = class_tree(tmp_path / "one", {"only": 3})
    with pytest.raises(PoisonlabError, match=err(f"image-folder: {one}: 1 class folder ('only'; if it holds the "
                                                 "class folders, point data.path at it); a classifier needs at least 2")):
        image_folder(one)
    split = tmp_path / "split"
    class_tree(split / "train", {"a": 2, "b": 2})
    class_tree(split / "test", {"a": 1, "x": 1})
    with pytest.raises(PoisonlabError, match=err("test class folder 'x' has no training folder of the same name")):
        image_folder(split)
    tiny = class_tree(tmp_path / "tiny", {"a": 1, "b": 1})
    with pytest.raises(PoisonlabError, match=err("2 rows are too few for a test split")):
        image_folder(tiny)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PoisonlabError, match="is neither a folder nor a .tar"):
        image_folder(tmp_path / "file.txt")


def test_image_folder_refuses_links_and_fifos(tmp_path: Path) -> None:
    root = class_tree(tmp_path / "d", {"a": 2, "b": 2})
    outside = write_image(tmp_path / "secret.png", [[7]])
    os.symlink(outside, root / "a" / "link.png")
    with pytest.raises(PoisonlabError, match=err(f"image-folder: {root / 'a' / 'link.png'}: is a symbolic link")):
        image_folder(root)
    (root / "a" / "link.png").unlink()
    os.mkfifo(root / "a" / "pipe.png")
    with pytest.raises(PoisonlabError, match=err("pipe.png: is a FIFO (named pipe), not a regular file")):
        image_folder(root)
    (root / "a" / "pipe.png").unlink()
    other = class_tree(tmp_path / "other", {"z": 1})
    os.symlink(other / "z", root / "c")
    with pytest.raises(PoisonlabError, match=err(f"image-folder: {root / 'c'}: is a symbolic link")):
        image_folder(root)


def test_image_folder_options_are_checked(tmp_path: Path) -> None:
    root = class_tree(tmp_path / "d", {"a": 2, "b": 2})
    with pytest.raises(PoisonlabError, match=err("data.options: unknown option 'imag_size' for reader 'image-folder' "
                                                 "(did you mean 'image_size'?); allowed: channels, image_size, ")):
        image_folder(root, imag_size=8)
    with pytest.raises(PoisonlabError, match=err("data.options.image_size must be in 1..1024, got 2000")):
        image_folder(root, image_size=2000)
    with pytest.raises(PoisonlabError, match=err("data.options.channels must be 1 (grayscale) or 3 (RGB), got 2")):
        image_folder(root, channels=2)
    with pytest.raises(PoisonlabError, match=err("data.options.test_fraction must be in (0, 1), got 1")):
        image_folder(root, test_fraction=1)
    with pytest.raises(PoisonlabError, match=err(f"image-folder: data.path '{tmp_path / 'nope'}' does not exist")):
        image_folder(tmp_path / "nope")


# ---------------------------------------------------------------- CSV and Parquet

TRAIN_CSV = "a,b,y\n1,x,p\n3,?,q\nNA,y,p\n1,x,q\n3,,p\n"
TEST_CSV = "a,b,y\n4,w,q\n2,y,p\n"


def test_csv_standardises_with_training_rows_and_one_hot_encodes(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(TRAIN_CSV)
    (tmp_path / "test.csv").write_text(TEST_CSV)
    split = csv_data(tmp_path / "train.csv", label="y", test_path=str(tmp_path / "test.csv"))
    # a: training values 1, 3, 1, 3 (NA missing): mean 2, std 1; missing -> the mean -> 0. b: one-hot over ?, x, y
    assert split.train.x.tolist() == [[-1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [-1, 0, 1, 0], [1, 1, 0, 0]]
    assert split.test.x.tolist() == [[2, 0, 0, 0], [0, 0, 0, 1]]  # 'w' never seen in training: all zeros
    assert split.train.classes == ["p", "q"] and split.train.y.tolist() == [0, 1, 0, 1, 0]
    assert split.test.y.tolist() == [1, 0]
    assert list(split.train.meta) == ["b"] and split.train.meta["b"].dtype == object
    assert split.train.meta["b"].tolist() == ["x", "?", "y", "x", "?"] and split.test.meta["b"].tolist() == ["w", "y"]
    _, encoder = build_split(read_csv(tmp_path / "train.csv"), read_csv(tmp_path / "test.csv"), {
        "label": "y", "drop": (), "categorical": (), "test_fraction": 0.2, "split_seed": 0})
    assert encoder.feature_names == ["a", "b=?", "b=x", "b=y"]


def test_csv_split_options_quotes_and_crlf(tmp_path: Path) -> None:
    rows = [f'"file,{i}.pdf",{i % 3},{"yes" if i % 2 else "no"},{["10", "9", "2"][i % 3]}' for i in range(30)]
    path = tmp_path / "t.csv"
    path.write_bytes(("name;ignored,code,flag,label\r\n" + "\r\n".join(rows) + "\r\n").encode())
    split = csv_data(path, label="label", drop=["name;ignored"], categorical=["code"])
    assert split.train.classes == ["2", "9", "10"]  # numeric labels in numeric order
    assert sorted(split.train.meta) == ["code", "flag"]
    assert split.train.x.shape[1] == 3 + 2 and len(split.train) + len(split.test) == 30
    assert torch.bincount(split.test.y).tolist() == [2, 2, 2]
    assert set(split.train.x[:, :3].flatten().tolist()) == {0.0, 1.0}
    same = csv_data(path, label="label", drop=["name;ignored"], categorical=["code"])
    assert torch.equal(same.test.x, split.test.x) and torch.equal(same.test.y, split.test.y)
    numeric = csv_data(path, label="label", drop=["name;ignored"])  # code 0, 1, 2: numeric, standardised on train
    assert numeric.train.x.shape[1] == 1 + 2
    assert abs(numeric.train.x[:, 0].mean().item()) < 1e-6 and abs(numeric.train.x[:, 0].std(unbiased=False) - 1) < 1e-5
    semi = tmp_path / "s.csv"
    semi.write_text("u;v;y\n1;2;a\n3;4;b\n5;6;a\n7;8;b\n")
    assert csv_data(semi, label="y", delimiter=";", test_fraction=0.5).train.x.shape == (2, 2)


def test_csv_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,income\n1,x\n2,y\n")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path}: no label column 'incme' (did you mean 'income'?); "
                                                 "the header has: a, income")):
        csv_data(path, label="incme")
    path.write_text("a,b,y\r\n1,x,p\r\n2,y\r\n3,z,q\r\n")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path} line 3: 2 fields, but the header has 3; every row "
                                                 "needs one value per column")):
        csv_data(path, label="y")
    path.write_text("a,y\n1,p\n2,q\n3,?\n")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path} line 4: the label 'y' is missing ('?')")):
        csv_data(path, label="y")
    path.write_text("a,y\n1,p\n2,p\n3,p\n")
    with pytest.raises(PoisonlabError, match=err("the label 'y' has one value only ('p')")):
        csv_data(path, label="y")
    path.write_text("a,y\n1,p\n2,q\n")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path}: no drop column 'aa' (did you mean 'a'?)")):
        csv_data(path, label="y", drop=["aa"])
    (tmp_path / "test.csv").write_text("y,a\np,1\n")
    with pytest.raises(PoisonlabError, match=err("test.csv: has its columns in another order or extra ones")):
        csv_data(path, label="y", test_path=str(tmp_path / "test.csv"))
    path.write_bytes(b"a,y\n\xff,p\n")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path}: not UTF-8 text")):
        csv_data(path, label="y")
    path.write_text("a,a,y\n1,2,p\n")
    with pytest.raises(PoisonlabError, match=err("column 'a' appears twice in the header")):
        csv_data(path, label="y")
    path.write_text("")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path}: the file is empty")):
        csv_data(path, label="y")
    with pytest.raises(PoisonlabError, match=err("data.options.label is required by reader 'csv'")):
        csv_data(path)
    with pytest.raises(PoisonlabError, match=err("data.options.delimiter must be one character")):
        csv_data(path, label="y", delimiter=";;")


def test_csv_size_cap_and_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,y\n" + "1,p\n2,q\n" * 300_000)  # 2.4 MB
    monkeypatch.setenv("POISONLAB_MAX_FILE_MB", "1")
    with pytest.raises(PoisonlabError, match=err(f"csv: {path}: is 2 MiB, over the 1 MiB size cap")):
        csv_data(path, label="y")
    os.symlink(path, tmp_path / "link.csv")
    with pytest.raises(PoisonlabError, match=err("link.csv: is a symbolic link")):
        csv_data(tmp_path / "link.csv", label="y")


def test_parquet_without_pyarrow_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(PoisonlabError, match=err("reading Parquet needs pyarrow, which is not installed; "
                                                 "pip install pyarrow")):
        load_data({"name": "parquet", "path": str(tmp_path / "t.parquet"), "options": {"label": "y"}})


def test_parquet_reads_as_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": [1.0, 3.0, None, 1.0, 3.0], "b": ["x", None, "y", "x", "?"],
                             "y": ["p", "q", "p", "q", "p"]}), tmp_path / "t.parquet")
    (tmp_path / "test.csv").write_text(TEST_CSV)
    split = load_data({"name": "parquet", "path": str(tmp_path / "t.parquet"), "options": {"label": "y"}})
    assert len(split.train) + len(split.test) == 5 and split.train.classes == ["p", "q"]
    assert split.train.meta["b"].dtype == object


# ---------------------------------------------------------------- npz


def test_npz_tabular_labels_remapped_and_split(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(12.0).reshape(4, 3), y=np.array([3, 7, 3, 7]), other=np.zeros(2))
    split = npz_data(tmp_path / "d.npz", test_fraction=0.5)
    assert split.train.classes == ["3", "7"] and split.train.x.dtype == torch.float32
    assert sorted(split.train.y.tolist()) == [0, 1] and sorted(split.test.y.tolist()) == [0, 1]
    rows = torch.cat([split.train.x, split.test.x])
    assert sorted(rows[:, 0].tolist()) == [0.0, 3.0, 6.0, 9.0]


def test_npz_images_with_test_set_and_class_names(tmp_path: Path) -> None:
    x = np.arange(16, dtype=np.uint8).reshape(4, 2, 2) * 16
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([1, 0]),
             classes=np.array(["cat", "dog"]))
    split = npz_data(tmp_path / "d.npz")
    assert split.train.x.shape == (4, 1, 2, 2) and split.train.classes == ["cat", "dog"]
    assert torch.equal(split.train.x[:, 0], torch.from_numpy(x).float() / 255)
    assert split.test.y.tolist() == [1, 0] and len(split.test) == 2
    fortran = np.asfortranarray(np.random.default_rng(0).random((6, 3, 4, 4), dtype=np.float32))
    np.savez(tmp_path / "f.npz", x=fortran, y=np.arange(6) % 2)
    both = npz_data(tmp_path / "f.npz", test_fraction=0.5)
    assert torch.equal(torch.cat([both.train.x, both.test.x]).sort(0).values, torch.from_numpy(fortran).sort(0).values)


def test_npz_errors_are_one_line(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 3)), y=np.array(["a", "b"]))
    with pytest.raises(PoisonlabError, match=err(f"npz: {p}: array 'y' has non-numeric dtype <U1; it must hold numbers "
                                                 "(labels must be integer class indices; give their names in a "
                                                 "'classes' array)")):
        npz_data(p)
    np.savez(p, x=np.zeros((4, 3)), y=np.array([0, 1, 0]))
    with pytest.raises(PoisonlabError, match=err(f"npz: {p}: x has 4 rows but y has 3; they must match")):
        npz_data(p)
    np.savez(p, x=np.zeros((4, 3)), Y=np.array([0, 1, 0, 1]))
    with pytest.raises(PoisonlabError, match=err(f"npz: {p}: no array 'y'; it holds Y, x (an .npz needs x and y")):
        npz_data(p)
    npz_of(p, {"x": npy_of(np.array([{"a": 1}, None], dtype=object)), "y": npy_of(np.array([0, 1]))})
    with pytest.raises(PoisonlabError, match=err("array 'x' has dtype object (objects or records, which would need "
                                                 "pickle)")):
        npz_data(p)
    npz_of(p, {"x": npy_bytes("<f4", (10**6, 10**6), b""), "y": npy_of(np.array([0, 1]))})
    with pytest.raises(PoisonlabError, match=err("array 'x': declares shape (1000000, 1000000) of float32, that is "
                                                 "3814697 MiB, over the 256 MiB size cap")):
        npz_data(p)
    npz_of(p, {"x": npy_bytes("<f4", (10, 3), bytes(12)), "y": npy_of(np.array([0, 1]))})
    with pytest.raises(PoisonlabError, match=err("array 'x' declares shape (10, 3) of float32 (120 bytes) but holds 12")):
        npz_data(p)
    np.savez(p, x=np.full((4, 1, 2, 2), 255.0), y=np.array([0, 1, 0, 1]))
    with pytest.raises(PoisonlabError, match=err("image values in x must be in [0, 1] (or uint8 0..255), got 255..255")):
        npz_data(p)
    np.savez(p, x=np.zeros((4, 3)), y=np.array([0, 1, 0, 2]), classes=np.array(["a", "b"]))
    with pytest.raises(PoisonlabError, match=err("y must hold class indices 0..1 (one per name in classes), got [0, 1, 2]")):
        npz_data(p)
    np.savez(p, x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]), x_test=np.zeros((1, 3)))
    with pytest.raises(PoisonlabError, match=err("has x_test without y_test; give both or neither")):
        npz_data(p)
    np.savez(p, x=np.array([[np.nan], [1], [2], [3]]), y=np.array([0, 1, 0, 1]))
    with pytest.raises(PoisonlabError, match=err("x holds NaN or infinite values")):
        npz_data(p)
    p.write_bytes(b"not a zip")
    with pytest.raises(PoisonlabError, match=err(f"npz: {p}: not an .npz (zip) file")):
        npz_data(p)


# ---------------------------------------------------------------- from Python


def test_from_arrays_tensors_strings_and_errors() -> None:
    x = torch.rand(10, 3, 4, 4)
    split = from_arrays(x, torch.tensor([0, 1] * 5), classes=["cat", "dog"], test_fraction=0.2, split_seed=3)
    assert split.train.classes == ["cat", "dog"] and (len(split.train), len(split.test)) == (8, 2)
    assert torch.bincount(split.test.y).tolist() == [1, 1]
    assert torch.equal(torch.cat([split.train.x, split.test.x]).sort(0).values, x.sort(0).values)
    named = from_arrays(np.eye(4), np.array(["b", "a", "b", "a"]), np.eye(4)[:2], np.array(["a", "c"]))
    assert named.train.classes == ["a", "b", "c"] and named.train.y.tolist() == [1, 0, 1, 0]
    assert named.test.y.tolist() == [0, 2]
    with pytest.raises(PoisonlabError, match=err("from_arrays: give both x_test and y_test, or neither")):
        from_arrays(np.eye(4), [0, 1, 0, 1], x_test=np.eye(4))
    with pytest.raises(PoisonlabError, match=err("from_arrays: x has 4 rows but y has 2; they must match")):
        from_arrays(np.eye(4), [0, 1])
    with pytest.raises(PoisonlabError, match=err("from_arrays: the training labels hold 1 class; a classifier needs")):
        from_arrays(np.eye(4), [1, 1, 1, 1])
    with pytest.raises(PoisonlabError, match=err("from_arrays: x has shape (4, 1, 1, 1, 1); expected (N, F) features")):
        from_arrays(np.zeros((4, 1, 1, 1, 1)), [0, 1, 0, 1])
    with pytest.raises(PoisonlabError, match=err("from_arrays: y holds non-integer labels")):
        from_arrays(np.eye(4), [0.5, 1, 0, 1])
    with pytest.raises(PoisonlabError, match=err("from_arrays: x_test rows have shape (3,) but x rows (4,)")):
        from_arrays(np.eye(4), [0, 1, 0, 1], np.zeros((2, 3)), [0, 1])


@pytest.fixture
def registered():
    names: list[str] = []
    yield names
    for name in names:
        unregister_dataset(name)


def test_register_dataset_from_config(tmp_path: Path, registered: list[str]) -> None:
    first = from_arrays(np.eye(6), [0, 1, 2] * 2, test_fraction=0.5)
    register_dataset("my-rows", first, "six rows")
    registered.append("my-rows")
    cfg = load_config(None, ["data.name=my-rows", "data.val_fraction=0"])
    assert load_data(cfg.data) is first
    second = from_arrays(np.eye(6) * 2, [0, 1] * 3, test_fraction=0.5)
    register_dataset("my-rows", lambda: second)  # the same name again: replaced (a callable, called at load)
    assert load_data(cfg.data) is second
    with pytest.raises(PoisonlabError, match=err("'mnist' is a built-in data set; register your data set under "
                                                 "another name")):
        register_dataset("mnist", first)
    with pytest.raises(PoisonlabError, match=err("'csv' is the name of a data reader")):
        register_dataset("csv", first)
    with pytest.raises(PoisonlabError, match=err("needs a DataSplit or a function returning one, got tuple")):
        register_dataset("other", (1, 2))
    with pytest.raises(PoisonlabError, match=err("data set 'my-rows' takes no data.path")):
        load_data({"name": "my-rows", "path": "x.csv"})


def test_load_data_dispatch_and_config_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text(TRAIN_CSV)
    cfg = load_config(None, ["data.name=csv", "data.path=t.csv", "data.options={label: y, test_fraction: 0.4}"])
    assert (cfg.data.path, cfg.data.options) == ("t.csv", {"label": "y", "test_fraction": 0.4})
    split = load_data(cfg.data)  # relative to the current folder
    assert (len(split.train), len(split.test)) == (3, 2)
    assert load_data(load_config(None, []).data).train.x.shape[1:] == (1, 8, 8)  # built-in digits, unchanged
    with pytest.raises(PoisonlabError, match=err("data.path is required by reader 'csv'")):
        load_config(None, ["data.name=csv", "data.options={label: y}"])
    with pytest.raises(PoisonlabError, match=err("data set 'digits' takes no data.options (it is found by name in "
                                                 "--data-dir); readers of your own files: csv, image-folder, npz, "
                                                 "parquet")):
        load_config(None, ["data.options={label: y}"])
    with pytest.raises(PoisonlabError, match=err("unknown data reader 'cvs' (did you mean 'csv'?)")):
        load_config(None, ["data.name=cvs", "data.path=t.csv"])
    with pytest.raises(PoisonlabError, match=err("config key 'data.options' must be a mapping")):
        load_config(None, ["data.name=csv", "data.path=t.csv", "data.options=[1]"])


def test_subpop_config_takes_a_reader() -> None:
    from poisonlab.subpop.config import load_subpop_config

    sub = load_subpop_config(None, ["data.name=csv", "data.path=t.csv", "data.options={label: y}"])
    assert sub.data.options == {"label": "y"}
    with pytest.raises(PoisonlabError, match=err("data.options: unknown option 'lable' for reader 'csv' (did you mean "
                                                 "'label'?)")):
        load_subpop_config(None, ["data.name=csv", "data.path=t.csv", "data.options={lable: y}"])


# ---------------------------------------------------------------- through the CLI


def test_cli_bad_reader_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,y\n1,p\n")
    (tmp_path / "c.yaml").write_text(f"data: {{name: csv, path: {tmp_path / 't.csv'}}}\n")
    out = run_cli(["run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "runs")], cwd=tmp_path)
    assert_one_line_error(out, "data.options.label is required by reader 'csv'")


def test_cli_ragged_csv_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,y\n1,p\n2,q,3\n")
    (tmp_path / "c.yaml").write_text(f"data: {{name: csv, path: {tmp_path / 't.csv'}, options: {{label: y}}}}\n"
                                     "model: {name: mlp}\n")
    out = run_cli(["run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "runs")], cwd=tmp_path)
    assert_one_line_error(out, f"csv: {tmp_path / 't.csv'} line 3: 3 fields, but the header has 2")
