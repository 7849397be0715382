"""Tables and plots for a run: the BadNets seed table, confusion matrices, triggers, filters.

A table is written twice: for people (markdown and the terminal: percentages, "–" for a
missing value, notes such as "(cached)") and for programs (CSV: plain numbers, rates as
fractions 0..1 at full precision, counts as integers, missing values empty). A
:class:`Table` holds the raw values, one dict per row, and a :class:`Column` per column
says how a person sees it; :func:`to_markdown` and :func:`print_table` format,
:func:`to_csv` writes the raw values, :func:`write_table` writes ``tables/<stem>.md`` and
``.csv``. Plain lists of dicts (already text) are rendered as they are. Plots are PNG files
written with matplotlib's Agg backend.
"""
from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

MISSING = "–"
"""How a person sees a missing value (None or NaN); the CSV cell is empty."""


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(float(value))
    return False


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals; NaN/None as an en dash."""
    if _missing(value):
        return MISSING
    return f"{100 * value:.2f}%"


FORMATS: dict[str, Callable[[Any], str]] = {
    "text": str,
    "int": lambda v: str(int(v)),
    "pct": pct,                                  # 0.1234 -> 12.34%
    "pt": lambda v: f"{100 * v:+.2f} pt",        # a difference of shares: -0.012 -> -1.20 pt
    "g": lambda v: f"{v:g}",
    "bool": lambda v: "yes" if v else "no",
    **{f"f{n}": (lambda n: lambda v: f"{v:.{n}f}")(n) for n in range(5)},  # f0 ... f4
}
"""Display formats of a :class:`Column` by name."""


@dataclass(frozen=True)
class Column:
    """A table column: its name (the markdown and CSV header), how a person sees a value
    (``fmt``: a name of :data:`FORMATS`, or a function ``(value, row) -> str``), and where it
    appears (``csv``: in the CSV; ``show``: in markdown and on the terminal). A missing value
    (None, NaN) is shown as "–" and written as an empty cell."""

    name: str
    fmt: str | Callable[[Any, dict[str, Any]], str] = "text"
    csv: bool = True
    show: bool = True

    def __post_init__(self) -> None:
        if not callable(self.fmt) and self.fmt not in FORMATS:
            raise ValueError(f"column {self.name!r}: unknown format {self.fmt!r}; one of {', '.join(FORMATS)}")

    def format(self, row: dict[str, Any]) -> str:
        value = row.get(self.name)
        if _missing(value):
            return MISSING
        return self.fmt(value, row) if callable(self.fmt) else FORMATS[self.fmt](value)


def csv_value(value: Any) -> Any:
    """A raw value as a CSV cell: integers (and booleans, as 1/0) as integers, other numbers at
    full precision (``repr``), None and NaN empty, anything else as text."""
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


class Table(list):
    """Rows of raw values (dicts keyed by column name) and their :class:`Column` s.

    It is a list of those dicts, so code reading a row reads numbers; :meth:`formatted` gives
    the rows as a person sees them, :meth:`raw` as the CSV holds them."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), columns: Iterable[Column] = ()) -> None:
        super().__init__(rows)
        self.columns = list(columns)

    def formatted(self) -> list[dict[str, str]]:
        shown = [c for c in self.columns if c.show]
        return [{c.name: c.format(r) for c in shown} for r in self]

    def raw(self) -> list[dict[str, Any]]:
        return [{c.name: csv_value(r.get(c.name)) for c in self.columns if c.csv} for r in self]


def _shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows.formatted() if isinstance(rows, Table) else rows


def write_table(folder: Any, stem: str, rows: Iterable[dict[str, Any]], columns: Sequence[Column] | None = None,
                title: str | None = None, markdown: bool = True) -> Table:
    """Write ``tables/<stem>.md`` (formatted, under ``title``; unless ``markdown`` is false) and
    ``tables/<stem>.csv`` (raw values) into run folder ``folder``; returns the table.
    ``rows`` is a :class:`Table`, or raw rows with their ``columns``."""
    table = rows if columns is None and isinstance(rows, Table) else Table(rows, columns or ())
    if markdown:
        folder.write_text(f"tables/{stem}.md", to_markdown(table, title))
    folder.write_text(f"tables/{stem}.csv", to_csv(table))
    return table


def seed_table(classes: Sequence[str], baseline_clean: np.ndarray, badnet_clean: np.ndarray,
               badnet_backdoor: np.ndarray | None, victim: str = "BadNet") -> Table:
    """The BadNets per-class table: class | baseline clean | BadNet clean | BadNet backdoor (errors), plus average
    (``victim`` names the poisoned model; without ``badnet_backdoor``, e.g. a targeted attack, no backdoor column).

    The average row is the unweighted mean over classes with data, as in the seed's Table 1.
    Values are error rates (fractions; NaN where a class has no data), shown as percentages.
    """
    from .metrics import mean_class_error

    names = ["baseline clean error", f"{victim} clean error", f"{victim} backdoor error"]
    errors = [baseline_clean, badnet_clean, badnet_backdoor]
    if badnet_backdoor is None:
        names, errors = names[:2], errors[:2]
    columns = [Column("class"), *(Column(n, "pct") for n in names)]
    rows = [{"class": name, **{n: float(e[i]) for n, e in zip(names, errors)}} for i, name in enumerate(classes)]
    rows.append({"class": "average", **{n: float(mean_class_error(e)) for n, e in zip(names, errors)}})
    return Table(rows, columns)


def to_markdown(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """A GitHub markdown table (a :class:`Table` formatted)."""
    rows = _shown(rows)
    if not rows:
        return ""
    head = list(rows[0])
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def from_markdown(text: str) -> list[dict[str, str]] | None:
    """The rows of a table written by :func:`to_markdown` (formatted text), or None when
    ``text`` holds no such table or a row does not split into the header's cells."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return None
    split = lambda ln: [c.strip() for c in ln.strip("|").split(" | ")]  # noqa: E731
    head = split(lines[0])
    rows = [split(ln) for ln in lines[2:]]
    if any(len(r) != len(head) for r in rows):
        return None
    return [dict(zip(head, r)) for r in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text: a :class:`Table`'s raw values (header even without rows), or plain rows as they are."""
    buf = io.StringIO()
    if isinstance(rows, Table):
        writer = csv.writer(buf)
        writer.writerow([c.name for c in rows.columns if c.csv])
        writer.writerows(list(r.values()) for r in rows.raw())
    elif rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Print a table on the terminal with rich (a :class:`Table` formatted)."""
    import sys

    from rich.console import Console
    from rich.table import Table as RichTable

    rows = _shown(rows)
    if not rows:
        return
    table = RichTable(title=title)
    for i, h in enumerate(rows[0]):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r.values()], end_section=r is rows[-2] if len(rows) > 1 else False)
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)


# -- plots ------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show_image(ax: Any, img: torch.Tensor) -> None:
    arr = img.detach().cpu().float().clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.transpose(arr[:3], (1, 2, 0)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_trigger_examples(path: Path, clean: torch.Tensor, triggered: torch.Tensor, classes: Sequence[str],
                          true: torch.Tensor, wanted: torch.Tensor, pred_clean: torch.Tensor,
                          pred_triggered: torch.Tensor, untargeted: bool = False) -> None:
    """Clean test images above their triggered copies, with the BadNet's predictions.

    Titles in red mark attack successes: the wanted label, or any wrong one when ``untargeted``.
    """
    plt = pyplot()
    n = len(clean)
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n + 0.6, 4.4), squeeze=False)
    for i in range(n):
        _show_image(axes[0, i], clean[i])
        axes[0, i].set_title(f"{classes[int(true[i])]}\n→ {classes[int(pred_clean[i])]}", fontsize=8)
        _show_image(axes[1, i], triggered[i])
        if untargeted:
            ok = int(pred_triggered[i]) != int(true[i])
            want = f"want ≠ {classes[int(true[i])]}"
        else:
            ok = int(pred_triggered[i]) == int(wanted[i])
            want = f"want {classes[int(wanted[i])]}"
        axes[1, i].set_title(f"{want}\n→ {classes[int(pred_triggered[i])]}", fontsize=8,
                             color="crimson" if ok else "black")
    axes[0, 0].set_ylabel("clean", fontsize=9)
    axes[1, 0].set_ylabel("triggered", fontsize=9)
    fig.suptitle("BadNet predictions on clean and triggered test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_first_layer_filters(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """First conv layer filters side by side, one panel per model (the seed's Figure 5)."""
    plt = pyplot()
    panels = list(weights.items())
    n_filters = max(w.shape[0] for _, w in panels)
    cols = min(8, n_filters)
    rows = math.ceil(n_filters / cols)
    fig = plt.figure(figsize=(0.6 * cols * len(panels) + 0.6 * (len(panels) - 1) + 0.4, 0.6 * rows + 0.9))
    outer = fig.add_gridspec(1, len(panels), wspace=0.12)
    for p, (title, w) in enumerate(panels):
        inner = outer[p].subgridspec(rows, cols, wspace=0.08, hspace=0.08)
        w = w.detach().cpu().float()
        lo, hi = float(w.min()), float(w.max())
        for k in range(w.shape[0]):
            ax = fig.add_subplot(inner[k // cols, k % cols])
            f = w[k]
            if f.shape[0] == 3:
                ax.imshow(np.transpose(((f - lo) / max(hi - lo, 1e-12)).numpy(), (1, 2, 0)), interpolation="nearest")
            else:
                ax.imshow(f.mean(0).numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=9, loc="left")
    fig.suptitle("first convolutional layer filters", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(path: Path, matrices: dict[str, np.ndarray], classes: Sequence[str]) -> None:
    """Row-normalised confusion matrices side by side."""
    plt = pyplot()
    n = len(matrices)
    size = min(0.35 * len(classes) + 2, 9)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    for ax, (title, m) in zip(axes[0], matrices.items()):
        rows = m.sum(1, keepdims=True)
        norm = np.divide(m, np.maximum(rows, 1))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(classes) <= 12:
            ax.set_xticks(range(len(classes)), labels=list(classes), fontsize=7)
            ax.set_yticks(range(len(classes)), labels=list(classes), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curves(path: Path, histories: dict[str, list[dict[str, float]]]) -> None:
    """Loss and training accuracy per epoch for each trained model, with its validation accuracy
    at the epochs where it was measured (every epoch under ``select: best-val``, else the last)."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        ax1.plot(epochs, [h["loss"] for h in hist], marker=".", label=name)
        line, = ax2.plot(epochs, [h["train_acc"] for h in hist], marker=".", label=f"{name} (train)")
        val = [(h["epoch"], h["val_acc"]) for h in hist if "val_acc" in h]
        if val:
            ax2.plot(*zip(*val), marker="o", linestyle=":", color=line.get_color(), label=f"{name} (validation)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
