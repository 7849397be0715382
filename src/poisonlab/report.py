"""Tables and plots for a run: the BadNets seed table, confusion matrices, triggers, filters.

Tables are lists of rows (dicts) rendered to CSV, markdown and the terminal; plots are
PNG files written with matplotlib's Agg backend.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals; NaN/None as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}%"


def seed_table(classes: Sequence[str], baseline_clean: np.ndarray, badnet_clean: np.ndarray,
               badnet_backdoor: np.ndarray) -> list[dict[str, str]]:
    """The BadNets per-class table: class | baseline clean | BadNet clean | BadNet backdoor (errors), plus average.

    The average row is the unweighted mean over classes with data, as in the seed's Table 1.
    """
    from .metrics import mean_class_error

    rows = []
    for i, name in enumerate(classes):
        rows.append({"class": name, "baseline clean error": pct(baseline_clean[i]),
                     "BadNet clean error": pct(badnet_clean[i]), "BadNet backdoor error": pct(badnet_backdoor[i])})
    rows.append({"class": "average", "baseline clean error": pct(mean_class_error(baseline_clean)),
                 "BadNet clean error": pct(mean_class_error(badnet_clean)),
                 "BadNet backdoor error": pct(mean_class_error(badnet_backdoor))})
    return rows


def to_markdown(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """A GitHub markdown table."""
    if not rows:
        return ""
    head = list(rows[0])
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Print a table on the terminal with rich."""
    import sys

    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title)
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
    """Loss and validation accuracy per epoch for each trained model."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        ax1.plot(epochs, [h["loss"] for h in hist], marker=".", label=name)
        if hist and "val_acc" in hist[0]:
            ax2.plot(epochs, [h["val_acc"] for h in hist], marker=".", label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
