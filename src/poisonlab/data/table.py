"""The ``csv`` and ``parquet`` readers: a table with a named label column.

Every column but the label (and those in ``drop``) is a feature. A column whose every
present value is a finite number is numeric (unless listed in ``categorical``):
standardised with the mean and (population) std of the *training* rows' present values,
a missing value becoming the training mean (0 after standardising). Any other column is
categorical: one-hot over its sorted training values, a missing value being the category
``?`` of its own, a value never seen in training all zeros; its raw values (stripped
strings, object arrays) are kept in ``Dataset.meta`` under the column's name (for
FeatureMatch). Missing: an empty cell, ``?``, ``NA``, ``N/A``, ``NaN``, ``nan``. Labels
are mapped to classes in sorted order (numerically when they are all numbers).

``task: regression`` keeps the label column as a float32 response instead (every value a
finite number; no classes: :attr:`~poisonlab.data.base.Dataset.is_regression`), the test
split then drawn at random, not stratified (Jagielski et al., S&P 2018, arXiv 1804.00308).
``standardize: false`` keeps numeric features as they are (their [0, 1] range and binary
columns, as in the paper's preprocessed sets).

The test set is ``test_path`` (another file with the same columns) or a stratified
``test_fraction`` of the rows drawn with ``split_seed``. CSV is read with the csv module
(``delimiter``, default ``,``; CRLF or LF), as a regular file under
``$POISONLAB_MAX_FILE_MB``; a row with the wrong number of fields is a one-line error
naming the file and line. Parquet needs pyarrow.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PoisonlabError, did_you_mean, one_line, shown
from .base import Dataset, DataSplit
from .limits import max_file_bytes, mib
from .safe_files import open_regular_file, read_regular_file
from .user_data import (
    READERS,
    Option,
    ReaderSpec,
    fraction_option,
    list_option,
    resolve_path,
    random_split,
    seed_option,
    sort_labels,
    stratified_split,
    text_option,
)

MISSING = frozenset({"", "?", "NA", "N/A", "NaN", "nan"})
CATEGORY_MISSING = "?"


def _delimiter(v: Any, where: str) -> str:
    if isinstance(v, str) and len(v) == 1 and v not in "\"\r\n":
        return v
    raise PoisonlabError(f"{where} must be one character (e.g. ',' or ';' or '\\t'), got {shown(v)}")


TASKS = ("classification", "regression")


def _task(v: Any, where: str) -> str:
    if v in TASKS:
        return str(v)
    raise PoisonlabError(f"{where} must be classification or regression, got {shown(v)}")


def _flag(v: Any, where: str) -> bool:
    if isinstance(v, bool):
        return v
    raise PoisonlabError(f"{where} must be true or false, got {shown(v)}")


COMMON = {
    "label": text_option(required=True),
    "task": Option("classification", _task),
    "standardize": Option(True, _flag),
    "test_path": text_option(),
    "test_fraction": fraction_option(0.2),
    "split_seed": seed_option(),
    "drop": list_option(),
    "categorical": list_option(),
}
CSV_OPTIONS = {**COMMON, "delimiter": Option(",", _delimiter)}


@dataclass
class Table:
    """Column names, columns of stripped strings and how to name row ``i`` in a message."""

    source: str
    header: list[str]
    columns: list[list[str]]
    where: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0


# ---------------------------------------------------------------- reading


def _header(cells: list[str], source: str) -> list[str]:
    names = [c.strip() or f"column{i + 1}" for i, c in enumerate(cells)]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise PoisonlabError(f"{source}: column '{one_line(n, 80)}' appears twice in the header; "
                                 "give every column its own name")
        seen.add(n)
    return names


def read_csv(path: Path, delimiter: str = ",", reader: str = "csv") -> Table:
    """A CSV file (first row: the header) as a :class:`Table`; blank lines are skipped."""
    source = f"{reader}: {path}"
    data = read_regular_file(path, path.parent, label=source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PoisonlabError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 CSV") from e
    del data
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    cells: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in rows:
            if not any(c.strip() for c in row):
                continue
            if header is None:
                header = _header(row, source)
                cells = [[] for _ in header]
                continue
            if len(row) != len(header):
                raise PoisonlabError(f"{source} line {rows.line_num}: {len(row)} fields, but the header has "
                                     f"{len(header)}; every row needs one value per column")
            for col, c in zip(cells, row):
                col.append(c.strip())
            lines.append(rows.line_num)
    except csv.Error as e:
        raise PoisonlabError(f"{source} line {rows.line_num}: not valid CSV ({one_line(str(e), 120)})") from e
    if header is None:
        raise PoisonlabError(f"{source}: the file is empty; a table needs a header row and data rows")
    return Table(source, header, cells, lambda i: f"line {lines[i]}")


def read_parquet(path: Path, reader: str = "parquet") -> Table:
    """A Parquet file as a :class:`Table` (values as strings; nulls missing); needs pyarrow."""
    source = f"{reader}: {path}"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PoisonlabError(f"{source}: reading Parquet needs pyarrow, which is not installed; "
                             "pip install pyarrow (or save the table as CSV and use name: csv)") from e
    with open_regular_file(path, path.parent, label=source) as fh:
        try:
            pf = pq.ParquetFile(fh)
            md = pf.metadata
            inflated = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
            if inflated > max_file_bytes():
                raise PoisonlabError(f"{source}: its row groups declare {mib(inflated)} uncompressed, over the "
                                     f"{mib(max_file_bytes())} size cap (raise $POISONLAB_MAX_FILE_MB if it is genuine)")
            for f in pf.schema_arrow:
                if pa.types.is_nested(f.type) or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
                    raise PoisonlabError(f"{source}: column '{one_line(f.name, 80)}' has type {f.type}; "
                                         "only plain numbers, strings and booleans can be read")
            table = pf.read()
        except PoisonlabError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise PoisonlabError(f"{source}: not a readable Parquet file ({one_line(str(e), 160)})") from e
    header = _header([str(n) for n in table.column_names], source)
    columns = [["" if v is None else str(v).strip() for v in table.column(i).to_pylist()]
               for i in range(table.num_columns)]
    return Table(source, header, columns, lambda i: f"row {i + 1}")


# ---------------------------------------------------------------- encoding


def _number(v: str) -> float | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _is_numeric(values: list[str]) -> bool:
    return all(v in MISSING or _number(v) is not None for v in values)


@dataclass(frozen=True, eq=False)
class TableEncoder:
    """Per feature column: ``("num", mean, std)`` or ``("cat", categories)``, fitted on training rows."""

    columns: tuple[str, ...]
    kinds: tuple[tuple[Any, ...], ...]

    @classmethod
    def fit(cls, names: list[str], train: list[list[str]], numeric: list[bool],
            standardize: bool = True) -> TableEncoder:
        kinds: list[tuple[Any, ...]] = []
        for values, is_num in zip(train, numeric):
            if is_num:
                arr = np.array([math.nan if v in MISSING else float(v) for v in values], dtype=np.float64)
                present = arr[~np.isnan(arr)]
                mean = float(present.mean()) if len(present) else 0.0
                std = float(present.std()) if len(present) else 1.0
                if not standardize:  # kept as is; a missing value still becomes the training mean
                    kinds.append(("num", mean, 1.0, 0.0))
                    continue
                kinds.append(("num", mean, std if std > 0 else 1.0))
            else:
                kinds.append(("cat", tuple(sorted({_category(v) for v in values}))))
        return cls(tuple(names), tuple(kinds))

    @property
    def feature_names(self) -> list[str]:
        """The column name for a numeric column, ``column=value`` for each one-hot position."""
        out: list[str] = []
        for name, kind in zip(self.columns, self.kinds):
            out += [name] if kind[0] == "num" else [f"{name}={v}" for v in kind[1]]
        return out

    def transform(self, columns: list[list[str]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The float32 features (N, len(feature_names)) and the raw categorical columns."""
        n = len(columns[0]) if columns else 0
        blocks: list[np.ndarray] = []
        meta: dict[str, np.ndarray] = {}
        for name, kind, values in zip(self.columns, self.kinds, columns):
            if kind[0] == "num":
                mean, std, centre = kind[1], kind[2], (kind[3] if len(kind) > 3 else kind[1])
                arr = np.array([mean if v in MISSING else float(v) for v in values], dtype=np.float64)
                blocks.append(((arr - centre) / std).astype(np.float32).reshape(n, 1))
                continue
            raw = np.array([_category(v) for v in values], dtype=object)
            index = {v: i for i, v in enumerate(kind[1])}
            codes = np.fromiter((index.get(v, -1) for v in raw), dtype=np.int64, count=n)
            block = np.zeros((n, len(kind[1])), dtype=np.float32)
            seen = codes >= 0
            block[np.flatnonzero(seen), codes[seen]] = 1.0
            blocks.append(block)
            meta[name] = raw
        x = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.float32)
        return x, meta


def _category(v: str) -> str:
    return CATEGORY_MISSING if v in MISSING else v


def _column(table: Table, name: str, what: str) -> int:
    if name in table.header:
        return table.header.index(name)
    shown_header = one_line(", ".join(table.header), 300)
    raise PoisonlabError(f"{table.source}: no {what} column '{one_line(name, 80)}'{did_you_mean(name, table.header)}; "
                         f"the header has: {shown_header}")


def _labels(table: Table, col: int) -> list[str]:
    values = table.columns[col]
    for i, v in enumerate(values):
        if v in MISSING:
            raise PoisonlabError(f"{table.source} {table.where(i)}: the label '{table.header[col]}' is missing "
                                 f"({shown(v)}); every row needs a label")
    return values


def build_split(train: Table, test: Table | None, options: dict[str, Any]) -> tuple[DataSplit, TableEncoder]:
    """Features, labels and meta of ``train`` (and ``test``, or a split of ``train``), encoded with the training rows."""
    label = options["label"]
    li = _column(train, label, "label")
    dropped = {_column(train, d, "drop") for d in options["drop"]}
    forced = {_column(train, c, "categorical") for c in options["categorical"]}
    if li in dropped:
        raise PoisonlabError(f"{train.source}: the label column '{label}' is also in drop")
    if test is not None and test.header != train.header:
        missing = [h for h in train.header if h not in test.header]
        what = f"lacks column '{one_line(missing[0], 80)}'" if missing else "has its columns in another order or extra ones"
        raise PoisonlabError(f"{test.source}: {what}; the test file needs the training file's header "
                             f"({one_line(', '.join(train.header), 200)})")
    if len(train) == 0:
        raise PoisonlabError(f"{train.source}: no data rows after the header")
    y_raw = _labels(train, li)
    y_test_raw = _labels(test, li) if test is not None else None
    if options.get("task") == "regression":
        return _regression_split(train, test, options, li, dropped, forced, y_raw, y_test_raw)
    classes = sort_labels(set(y_raw) | set(y_test_raw or []))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in y_raw], dtype=np.int64)
    if len(set(y_raw)) < 2:
        raise PoisonlabError(f"{train.source}: the label '{label}' has one value only ({shown(y_raw[0])}) in the "
                             "training rows; a classifier needs at least 2 classes")
    names, tr_cols, te_cols, numeric = _feature_columns(train, test, li, dropped, forced)
    if te_cols is None:
        tr_idx, te_idx = stratified_split(y, options["test_fraction"], options["split_seed"], train.source)
        te_cols = [[c[j] for j in te_idx] for c in tr_cols]
        tr_cols = [[c[j] for j in tr_idx] for c in tr_cols]
        y, y_test = y[tr_idx], y[te_idx]
    else:
        y_test = np.array([index[v] for v in y_test_raw or []], dtype=np.int64)
    encoder = TableEncoder.fit(names, tr_cols, numeric, options.get("standardize", True))
    x_tr, meta_tr = encoder.transform(tr_cols)
    x_te, meta_te = encoder.transform(te_cols)
    return DataSplit(Dataset(torch.from_numpy(x_tr), torch.from_numpy(y), classes, meta_tr),
                     Dataset(torch.from_numpy(x_te), torch.from_numpy(y_test), list(classes), meta_te)), encoder


def _feature_columns(train: Table, test: Table | None, li: int, dropped: set[int],
                     forced: set[int]) -> tuple[list[str], list[list[str]], list[list[str]] | None, list[bool]]:
    """The feature columns (all but the label and the dropped ones): names, training and test
    values, and whether each is numeric in both (``forced`` ones are categorical)."""
    feats = [i for i in range(len(train.header)) if i != li and i not in dropped]
    names = [train.header[i] for i in feats]
    tr_cols = [train.columns[i] for i in feats]
    te_cols = [test.columns[i] for i in feats] if test is not None else None
    numeric = [i not in forced and _is_numeric(c) and (te_cols is None or _is_numeric(te_cols[k]))
               for k, (i, c) in enumerate(zip(feats, tr_cols))]
    return names, tr_cols, te_cols, numeric


def _responses(table: Table, col: int, values: list[str]) -> np.ndarray:
    """The label column as float responses; a one-line error at the first value that is no number."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        f = _number(v)
        if f is None:
            raise PoisonlabError(f"{table.source} {table.where(i)}: the response '{table.header[col]}' is "
                                 f"{shown(v)}, not a finite number (task: regression)")
        out[i] = f
    return out


def _regression_split(train: Table, test: Table | None, options: dict[str, Any], li: int, dropped: set[int],
                      forced: set[int], y_raw: list[str], y_test_raw: list[str] | None) -> tuple[DataSplit,
                                                                                                TableEncoder]:
    """:func:`build_split` for ``task: regression``: float32 responses, no classes, a random test split."""
    y = _responses(train, li, y_raw)
    y_test = _responses(test, li, y_test_raw) if test is not None and y_test_raw is not None else None
    names, tr_cols, te_cols, numeric = _feature_columns(train, test, li, dropped, forced)
    if te_cols is None:
        tr_idx, te_idx = random_split(len(y), options["test_fraction"], options["split_seed"], train.source)
        te_cols = [[c[j] for j in te_idx] for c in tr_cols]
        tr_cols = [[c[j] for j in tr_idx] for c in tr_cols]
        y, y_test = y[tr_idx], y[te_idx]
    encoder = TableEncoder.fit(names, tr_cols, numeric, options.get("standardize", True))
    x_tr, meta_tr = encoder.transform(tr_cols)
    x_te, meta_te = encoder.transform(te_cols)
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return DataSplit(Dataset(torch.from_numpy(x_tr), as_y(y), [], meta_tr),
                     Dataset(torch.from_numpy(x_te), as_y(y_test), [], meta_te)), encoder


def _load(read: Callable[[Path], Table]) -> Callable[[Path, dict[str, Any]], DataSplit]:
    def load(path: Path, options: dict[str, Any]) -> DataSplit:
        test = None
        if options["test_path"] is not None:
            test_path = resolve_path(options["test_path"])
            test = read(test_path)
        return build_split(read(path), test, options)[0]

    return load


def load_csv(path: Path, options: dict[str, Any]) -> DataSplit:
    """The ``csv`` reader (see the module docstring)."""
    return _load(lambda p: read_csv(p, options["delimiter"]))(path, options)


def load_parquet(path: Path, options: dict[str, Any]) -> DataSplit:
    """The ``parquet`` reader (see the module docstring)."""
    return _load(read_parquet)(path, options)


READERS.register("csv")(ReaderSpec("csv", "a CSV table with a label column (options: label, ...)", CSV_OPTIONS,
                                   load_csv))
READERS.register("parquet")(ReaderSpec("parquet", "a Parquet table with a label column (needs pyarrow)", COMMON,
                                       load_parquet))
