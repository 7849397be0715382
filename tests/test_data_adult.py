"""Adult loader on tiny files in the official UCI format (comma+space, '?', dotted test labels)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonlab.data import adult
from poisonlab.data.base import DATASETS, load_dataset
from poisonlab.errors import PoisonlabError

TRAIN_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K",
    "38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, 40, United-States, <=50K",
    "53, ?, 234721, 11th, 7, Married-civ-spouse, ?, Husband, Black, Male, 0, 0, 40, United-States, <=50K",
    "28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, >50K",
    "37, Private, 284582, Masters, 14, Married-civ-spouse, Exec-managerial, Wife, White, Female, 14084, 1902, 40, ?, >50K",
]
TEST_ROWS = [
    # occupation and relationship never occur in training
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    # native-country and occupation never occur in training
    "38, ?, 89814, HS-grad, 9, Married-civ-spouse, Farming-fishing, Husband, White, Male, 0, 0, 50, Peru, >50K.",
]
AGES = [39, 50, 38, 53, 28, 37]

FEATURES = [
    "age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week",
    "workclass=?", "workclass=Private", "workclass=Self-emp-not-inc", "workclass=State-gov",
    "education=11th", "education=Bachelors", "education=HS-grad", "education=Masters",
    "marital-status=Divorced", "marital-status=Married-civ-spouse", "marital-status=Never-married",
    "occupation=?", "occupation=Adm-clerical", "occupation=Exec-managerial", "occupation=Handlers-cleaners",
    "occupation=Prof-specialty",
    "relationship=Husband", "relationship=Not-in-family", "relationship=Wife",
    "race=Black", "race=White",
    "sex=Female", "sex=Male",
    "native-country=?", "native-country=Cuba", "native-country=United-States",
]


def write_files(folder: Path, train: list[str] | None = None, test: list[str] | None = None) -> Path:
    """adult.data (trailing empty line) and adult.test (comment line first, trailing empty line)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(TRAIN_ROWS if train is None else train) + "\n\n")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(TEST_ROWS if test is None else test) + "\n\n")
    return folder


def onehot_names(row: torch.Tensor) -> set[str]:
    return {FEATURES[6 + i] for i in row[6:].nonzero().flatten().tolist()}


def test_load_values(tmp_path: Path) -> None:
    write_files(tmp_path / "adult")
    split = load_dataset("adult", tmp_path)
    tr, te = split.train, split.test
    assert tr.x.shape == (6, 32) and te.x.shape == (2, 32) and tr.x.dtype == torch.float32
    assert adult.adult_feature_names(split) == FEATURES
    assert adult.adult_feature_names(tr) == FEATURES == adult.adult_feature_names(tr.meta)
    assert tr.y.tolist() == [0, 1, 0, 0, 1, 1] and te.y.tolist() == [0, 1]
    assert tr.classes == ["<=50K", ">50K"] == te.classes

    # age standardised by hand with the training mean and population std
    mean = sum(AGES) / 6
    std = math.sqrt(sum((a - mean) ** 2 for a in AGES) / 6)
    assert torch.allclose(tr.x[:, 0], torch.tensor([(a - mean) / std for a in AGES]), atol=1e-6)
    assert torch.allclose(te.x[:, 0], torch.tensor([(25 - mean) / std, (38 - mean) / std]), atol=1e-6)
    # capital-loss: one non-zero value among six
    cl_mean, cl_std = 1902 / 6, math.sqrt((1902 - 1902 / 6) ** 2 / 6 + 5 * (1902 / 6) ** 2 / 6)
    assert tr.x[5, 4].item() == pytest.approx((1902 - cl_mean) / cl_std, abs=1e-6)

    # one-hot positions, '?' being a category of its own
    assert onehot_names(tr.x[3]) == {
        "workclass=?", "education=11th", "marital-status=Married-civ-spouse", "occupation=?",
        "relationship=Husband", "race=Black", "sex=Male", "native-country=United-States",
    }
    assert tr.x[3, 6:].nonzero().flatten().tolist() == [0, 4, 9, 11, 16, 19, 22, 25]
    assert (tr.x[:, 6:].sum(1) == 8).all()
    # categories unseen in training encode as zeros
    assert onehot_names(te.x[0]) == {
        "workclass=Private", "education=11th", "marital-status=Never-married", "race=Black", "sex=Male",
        "native-country=United-States",
    }
    assert onehot_names(te.x[1]) == {
        "workclass=?", "education=HS-grad", "marital-status=Married-civ-spouse", "relationship=Husband",
        "race=White", "sex=Male",
    }

    # meta: raw values per original column, official names
    assert list(tr.meta) == list(adult.COLUMNS)
    assert tr.meta["education"].dtype == object and tr.meta["education"].tolist()[:2] == ["Bachelors", "Bachelors"]
    assert tr.meta["workclass"][3] == "?" and tr.meta["native-country"][5] == "?"
    assert te.meta["occupation"].tolist() == ["Machine-op-inspct", "Farming-fishing"]
    assert tr.meta["age"].dtype == np.int64 and tr.meta["age"].tolist() == AGES
    assert te.meta["fnlwgt"].tolist() == [226802, 89814]
    assert tr.subset(tr.meta["sex"] == "Female").meta["age"].tolist() == [28, 37]


def test_spec_and_encoder(tmp_path: Path) -> None:
    spec = DATASETS.get("adult")
    assert not spec.downloadable and not spec.embedded
    write_files(tmp_path / "adult")
    assert spec.present(tmp_path) == (True, tmp_path / "adult")
    meta, _ = adult.read_adult_file(tmp_path / "adult" / "adult.data")
    enc = adult.AdultEncoder.fit(meta)
    assert enc.feature_names == FEATURES
    # a constant column (std 0) is centred, not divided by zero
    meta["hours-per-week"] = np.full(6, 40, dtype=np.int64)
    x = adult.AdultEncoder.fit(meta).transform(meta)
    assert np.isfinite(x).all() and (x[:, 5] == 0).all()


def test_crlf_and_test_labels_without_dot(tmp_path: Path) -> None:
    folder = write_files(tmp_path, test=[r.removesuffix(".") for r in TEST_ROWS])
    (folder / "adult.data").write_bytes((folder / "adult.data").read_bytes().replace(b"\n", b"\r\n"))
    split = adult.load_adult([folder])
    assert split.train.y.tolist() == [0, 1, 0, 0, 1, 1] and split.test.y.tolist() == [0, 1]
    assert split.train.meta["sex"][-1] == "Female"


@pytest.mark.parametrize(
    ("which", "line", "bad", "message"),
    [
        ("train", 3, TRAIN_ROWS[2].rsplit(",", 2)[0] + ", <=50K",
         r"adult\.data line 3: expected 15 comma-separated values, found 14"),
        ("train", 2, TRAIN_ROWS[1].replace("50, ", "fifty, ", 1), r"adult\.data line 2: column 'age' is not an integer \('fifty'\)"),
        ("test", 3, TEST_ROWS[1].replace("89814", "8.9e4"), r"adult\.test line 3: column 'fnlwgt' is not an integer \('8\.9e4'\)"),
        ("test", 2, TEST_ROWS[0].replace("<=50K.", "<=50"), r"adult\.test line 2: unknown label '<=50'"),
        ("train", 5, TRAIN_ROWS[4].replace("Cuba", ""), r"adult\.data line 5: empty value in column 'native-country'"),
    ],
)
def test_malformed_row(tmp_path: Path, which: str, line: int, bad: str, message: str) -> None:
    rows = list(TRAIN_ROWS if which == "train" else TEST_ROWS)
    rows[line - 1 - (which == "test")] = bad  # adult.test's line 1 is the comment
    folder = write_files(tmp_path, **{which: rows})
    with pytest.raises(PoisonlabError, match=message) as err:
        adult.load_adult([folder])
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_files_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_files(b)
    (b / "adult.test").unlink()  # half a set is not a set
    with pytest.raises(PoisonlabError, match=r"adult: files not found \(adult\.data, adult\.test\)") as err:
        adult.load_adult([a, b])
    msg = str(err.value)
    assert f"searched {a}, {b}" in msg and "--data-dir" in msg and "--download" not in msg and "\n" not in msg
    with pytest.raises(PoisonlabError, match="no automatic download"):
        adult.load_adult([a], download=True)


def test_not_text(tmp_path: Path) -> None:
    folder = write_files(tmp_path)
    (folder / "adult.data").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(PoisonlabError, match=r"adult\.data is not a text file"):
        adult.load_adult([folder])
