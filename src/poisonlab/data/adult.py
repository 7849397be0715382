"""UCI Adult / Census Income (Kohavi 1996, "Scaling Up the Accuracy of Naive-Bayes
Classifiers: a Decision-Tree Hybrid", KDD 1996), as used for subpopulation poisoning
(Jagielski et al., CCS 2021).

Two files in the official UCI format: ``adult.data`` (32,561 training rows) and
``adult.test`` (16,281 test rows). Each row is 15 values separated by ``", "``: 14
attributes (:data:`COLUMNS`) and the income label, ``<=50K`` or ``>50K`` (``adult.test``
writes ``<=50K.`` / ``>50K.``). ``adult.test`` starts with the comment line
``|1x3 Cross validator``; lines starting with ``|`` and empty lines are skipped, ``?``
marks a missing value. Parsing is strict: a row with the wrong number of values, a
non-integer number, an empty value or an unknown label is a one-line error naming the
file and line.

Features (:class:`AdultEncoder`, fitted on the training set only): the 6 numeric
columns standardised with the training mean and (population) std, then a one-hot block
per categorical column over the training set's categories in sorted order (``?`` is a
category of its own; a test value never seen in training encodes as all zeros). ``y`` is
1 for ``>50K``. ``meta`` keeps every original column by its official name: numbers as
int64, categorical values as stripped strings (object arrays), for subpopulation
filters such as FeatureMatch. :func:`adult_feature_names` names the columns of ``x``.

UCI publishes no checksummed mirror, so there is no ``--download``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PoisonlabError, shown
from .base import DATASETS, Dataset, DatasetSpec, DataSplit, first_dir_with
from .safe_files import read_regular_file

TRAIN_FILE = "adult.data"
TEST_FILE = "adult.test"
COLUMNS: tuple[str, ...] = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
)
NUMERIC: tuple[str, ...] = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL: tuple[str, ...] = (
    "workclass", "education", "marital-status", "occupation", "relationship", "race", "sex", "native-country",
)
CLASSES: tuple[str, ...] = ("<=50K", ">50K")
MISSING = "?"
_LABELS = {"<=50K": 0, ">50K": 1, "<=50K.": 0, ">50K.": 1}


# ---------------------------------------------------------------- parsing


def parse_adult(text: str, source: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per-column values and int64 labels of one file in the official format.

    ``source`` names the file in error messages. Numeric columns come back as int64,
    categorical ones as object arrays of stripped strings.
    """
    columns: list[list[str]] = [[] for _ in COLUMNS]
    labels: list[int] = []
    n_fields = len(COLUMNS) + 1
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("|"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != n_fields:
            raise PoisonlabError(
                f"adult: {source} line {line_no}: expected {n_fields} comma-separated values, "
                f"found {len(fields)} ({shown(line)}); replace it with the official file"
            )
        if "" in fields:
            name = (*COLUMNS, "income")[fields.index("")]
            raise PoisonlabError(
                f"adult: {source} line {line_no}: empty value in column '{name}' (missing values are '?'); "
                "replace it with the official file"
            )
        label = _LABELS.get(fields[-1])
        if label is None:
            raise PoisonlabError(
                f"adult: {source} line {line_no}: unknown label {shown(fields[-1])}, expected '<=50K' or '>50K' "
                "(with a trailing '.' in adult.test); replace it with the official file"
            )
        for values, value in zip(columns, fields):
            values.append(value)
        labels.append(label)
    meta: dict[str, np.ndarray] = {}
    for name, values in zip(COLUMNS, columns):
        if name in NUMERIC:
            meta[name] = _integers(values, name, text, source)
        else:
            meta[name] = np.array(values, dtype=object)
    return meta, np.array(labels, dtype=np.int64)


def _integers(values: list[str], name: str, text: str, source: str) -> np.ndarray:
    """``values`` as int64; a non-integer is reported with its line number (found on the slow path)."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    col = COLUMNS.index(name)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("|"):
            continue
        value = line.split(",")[col].strip()
        try:
            ok = -(2**63) <= int(value) < 2**63  # int64, as the column is stored
        except ValueError:
            ok = False
        if not ok:
            raise PoisonlabError(
                f"adult: {source} line {line_no}: column '{name}' is not an integer ({shown(value)}); "
                "replace it with the official file"
            )
    raise AssertionError("unreachable: a value failed to parse but no line did")  # pragma: no cover


def read_adult_file(path: Path, root: Path | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read and parse ``adult.data`` or ``adult.test`` (see :func:`parse_adult`); the file must be
    a regular file inside ``root`` (the data folder) and under ``$POISONLAB_MAX_FILE_MB``."""
    data = read_regular_file(path, root, label=f"adult: {path}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PoisonlabError(f"adult: {path} is not a text file ({e.reason} at byte {e.start}); "
                             "replace it with the official file") from e
    return parse_adult(text, str(path))


# ---------------------------------------------------------------- features


@dataclass(frozen=True, eq=False)
class AdultEncoder:
    """Standardisation and one-hot encoding fitted on a training set's ``meta``.

    ``mean``/``std`` follow :data:`NUMERIC`; ``categories`` maps each of
    :data:`CATEGORICAL` to its sorted training values.
    """

    mean: np.ndarray
    std: np.ndarray
    categories: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, meta: Mapping[str, np.ndarray]) -> AdultEncoder:
        """Statistics and categories of a training set (a std of 0 is replaced by 1)."""
        num = np.stack([np.asarray(meta[c], dtype=np.float64) for c in NUMERIC], axis=1)
        mean = num.mean(axis=0) if len(num) else np.zeros(len(NUMERIC))
        std = num.std(axis=0) if len(num) else np.ones(len(NUMERIC))
        std = np.where(std > 0, std, 1.0)
        cats = {c: tuple(sorted({str(v) for v in meta[c]})) for c in CATEGORICAL}
        return cls(mean, std, cats)

    @property
    def feature_names(self) -> list[str]:
        """``age``, ..., ``hours-per-week``, then ``column=value`` for each one-hot position."""
        return list(NUMERIC) + [f"{c}={v}" for c in CATEGORICAL for v in self.categories[c]]

    def transform(self, meta: Mapping[str, np.ndarray]) -> np.ndarray:
        """The float32 feature matrix (N, len(feature_names)) of rows given by their columns."""
        n = len(meta[NUMERIC[0]])
        num = np.stack([np.asarray(meta[c], dtype=np.float64) for c in NUMERIC], axis=1).reshape(n, len(NUMERIC))
        blocks = [((num - self.mean) / self.std).astype(np.float32)]
        rows = np.arange(n)
        for c in CATEGORICAL:
            cats = self.categories[c]
            index = {v: i for i, v in enumerate(cats)}
            codes = np.fromiter((index.get(str(v), -1) for v in meta[c]), dtype=np.int64, count=n)
            block = np.zeros((n, len(cats)), dtype=np.float32)
            seen = codes >= 0
            block[rows[seen], codes[seen]] = 1.0
            blocks.append(block)
        return np.concatenate(blocks, axis=1)


def adult_feature_names(train: DataSplit | Dataset | Mapping[str, np.ndarray]) -> list[str]:
    """Names of the columns of ``x``, from the training set (a DataSplit's ``train``, a Dataset or its meta)."""
    if isinstance(train, DataSplit):
        train = train.train
    meta = train.meta if isinstance(train, Dataset) else train
    return AdultEncoder.fit(meta).feature_names


# ---------------------------------------------------------------- loader


def load_adult_from(folder: Path) -> DataSplit:
    """Adult from ``folder/adult.data`` and ``folder/adult.test``, encoded with the training statistics."""
    train_meta, y_train = read_adult_file(folder / TRAIN_FILE, folder)
    test_meta, y_test = read_adult_file(folder / TEST_FILE, folder)
    if len(y_train) == 0:
        raise PoisonlabError(f"adult: {folder / TRAIN_FILE} holds no rows; replace it with the official file")
    encoder = AdultEncoder.fit(train_meta)
    classes = list(CLASSES)
    return DataSplit(
        Dataset(torch.from_numpy(encoder.transform(train_meta)), torch.from_numpy(y_train), classes, train_meta),
        Dataset(torch.from_numpy(encoder.transform(test_meta)), torch.from_numpy(y_test), list(classes), test_meta),
    )


def load_adult(roots: list[Path], download: bool = False) -> DataSplit:
    """Adult, 32,561 + 16,281 rows, from the first candidate folder holding both files (no download)."""
    try:
        folder = first_dir_with(roots, [TRAIN_FILE, TEST_FILE], "adult")
    except PoisonlabError as e:
        if not download:
            raise
        raise PoisonlabError(f"{e} (Adult has no automatic download; get the files from the UCI repository)") from e
    return load_adult_from(folder)


DATASETS.register("adult")(
    DatasetSpec(
        name="adult",
        description="UCI Adult census income (Kohavi 1996), 32,561 train + 16,281 test rows, "
        "6 standardised numeric + one-hot categorical features",
        subdirs=("adult", "Adult", "uci-adult", ""),
        files=(TRAIN_FILE, TEST_FILE),
        load=load_adult,
        downloadable=False,
    )
)
