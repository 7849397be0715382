"""A finished run as Python values: its metrics, its tables as pandas DataFrames, and JSON.

:func:`load_run` finds a run the way ``poisonlab show`` does (an id, a unique id prefix, or a
run folder; a :class:`~poisonlab.pipeline.context.RunOutcome` works too) and reads its
``metrics.json`` with the store's checks, so a damaged run is the same one-line error.
:meth:`Run.table` reads ``tables/<name>.csv``, the numeric form of every table (rates as
fractions, counts as integers, missing values as empty cells, read as NaN; see
:mod:`poisonlab.report`). pandas is imported only there (``pip install poisonlab[analysis]``).

>>> run = load_run("20260101-000000-digits-badnets-abc123", root="runs")  # doctest: +SKIP
>>> run.table("summary").set_index("model")["clean accuracy"]  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PoisonlabError, one_line

if TYPE_CHECKING:
    import pandas

__all__ = ["Run", "load_run"]

PANDAS_MISSING = "pandas is not installed; pip install pandas (or poisonlab[analysis])"
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?inf")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise PoisonlabError(PANDAS_MISSING) from None
    return pandas


def _cell(text: str) -> Any:
    """A CSV cell as JSON: empty as None, numbers as numbers, anything else as text."""
    if text == "":
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


@dataclass(frozen=True)
class Run:
    """A finished run folder: ``id``, ``path``, ``metrics`` (metrics.json) and ``tables`` (the
    names of its ``tables/*.csv``, sorted)."""

    id: str
    path: Path
    metrics: dict[str, Any] = field(repr=False)
    tables: list[str] = field(default_factory=list)

    def _csv(self, name: str) -> bytes:
        from .store_json import read_bytes
        from .store_view import MAX_TABLE_BYTES

        stem = name[:-4] if isinstance(name, str) and name.endswith(".csv") else name
        if stem not in self.tables:
            known = ", ".join(self.tables) or "none"
            raise PoisonlabError(f"run {self.id} has no table {one_line(repr(name), 80)}; its tables: {known}")
        path = self.path / "tables" / f"{stem}.csv"
        try:
            return read_bytes(path, f"'{path}'", MAX_TABLE_BYTES)
        except FileNotFoundError:
            raise PoisonlabError(f"'{path}' disappeared while being read") from None

    def table(self, name: str) -> pandas.DataFrame:
        """Table ``name`` (e.g. ``"summary"``, ``"seed_table"``) as a DataFrame of its CSV values:
        numbers as numbers, empty cells as NaN (text such as ``"NA"`` stays text)."""
        pd = _pandas()
        data = self._csv(name)
        try:
            return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""], encoding="utf-8",
                               float_precision="round_trip")
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PoisonlabError(f"'{self.path / 'tables' / name}' is not a readable CSV table "
                                 f"({one_line(str(exc), 120)})") from None

    def frames(self) -> dict[str, pandas.DataFrame]:
        """Every table as a DataFrame, by name."""
        return {name: self.table(name) for name in self.tables}

    def rows(self, name: str) -> list[dict[str, Any]]:
        """Table ``name`` as a list of dicts (numbers as numbers, empty cells as None); no pandas needed."""
        text = self._csv(name).decode("utf-8", "replace")
        return [{k: _cell(v or "") for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]

    def to_dict(self) -> dict[str, Any]:
        """``id``, ``path``, ``metrics`` and ``tables`` (name -> rows), NaN and infinities as None."""
        from .store_view import _strict

        return _strict({"id": self.id, "path": str(self.path), "metrics": self.metrics,
                        "tables": {name: self.rows(name) for name in self.tables}})

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON (which jq reads)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def load_run(run: str | Path | Any, root: str | Path = "runs") -> Run:
    """The run ``run`` of store ``root``: a run id, a unique id prefix, a run folder, or a
    ``RunOutcome`` (what :func:`~poisonlab.experiment.run_experiment` returns). A missing,
    ambiguous or damaged run is a one-line :class:`~poisonlab.errors.PoisonlabError`."""
    from .store import find_run, read_metrics
    from .store_view import MAX_TABLES

    key = getattr(run, "path", run)
    if not isinstance(key, (str, Path)) or str(key) == "":
        raise PoisonlabError(f"load_run takes a run id, prefix or folder, got {one_line(repr(run), 80)}")
    path = find_run(root, str(key))
    metrics = read_metrics(path)
    folder = path / "tables"
    tables = sorted(p.stem for p in folder.glob("*.csv"))[:MAX_TABLES] if folder.is_dir() else []
    return Run(path.resolve().name, path, metrics, tables)
