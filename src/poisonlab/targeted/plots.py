"""What a targeted run shows at a glance: the targets with the victim's answer, and a few poisons
beside the clean images they were made from, with their difference amplified."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..report import _show_image, pyplot


def plot_targeted_examples(path: Path, targets: torch.Tensor, true: torch.Tensor, wanted: torch.Tensor,
                           predicted: torch.Tensor, bases: torch.Tensor, poisons: torch.Tensor,
                           classes: Sequence[str], title: str) -> None:
    """Row 1: up to 6 targets (true class, wanted class, the victim's answer; red when poisoned);
    rows 2-4: up to 6 poisons' clean images, the poisons, and ``|poison - clean|`` scaled to the
    largest difference shown."""
    plt = pyplot()
    n_t, n_p = min(6, len(targets)), min(6, len(poisons))
    cols = max(n_t, n_p, 1)
    fig, axes = plt.subplots(4, cols, figsize=(1.5 * cols + 0.8, 6.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n_t):
        _show_image(axes[0, i], targets[i])
        hit = int(predicted[i]) == int(wanted[i])
        axes[0, i].set_title(f"{classes[int(true[i])]} → want {classes[int(wanted[i])]}\nvictim: "
                             f"{classes[int(predicted[i])]}", fontsize=7, color="crimson" if hit else "black")
    diff = (poisons[:n_p] - bases[:n_p]).abs()
    scale = float(diff.max()) if n_p and float(diff.max()) > 0 else 1.0
    for i in range(n_p):
        _show_image(axes[1, i], bases[i])
        _show_image(axes[2, i], poisons[i])
        _show_image(axes[3, i], diff[i] / scale)
    for r, label in enumerate(("targets", "clean images", "poisons", f"|difference| × {1 / scale:.1f}")):
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
