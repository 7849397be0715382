"""``poisonlab run --save-reference FILE``: the clean reference's weights of a run, copied to a
safetensors file another config names as ``model.weights`` (a feature extractor trained on
other data: the transfer setting of Shafahi et al. 2018)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .errors import PoisonlabError


def check_save_reference(cfg: Any, target: Path) -> None:
    """--save-reference needs a run that writes its clean reference's weights, to a .safetensors path."""
    output = getattr(cfg, "output", None)
    if output is None or not hasattr(cfg, "model") or not getattr(output, "save_weights", False):
        raise PoisonlabError("--save-reference needs a run that saves its clean reference's weights "
                             "(a backdoor, targeted or availability config with output.save_weights: true)")
    if target.suffix != ".safetensors":
        raise PoisonlabError(f"--save-reference writes safetensors; name a .safetensors file, got '{target}'")


def save_reference_weights(outcome: Any, target: Path) -> None:
    """Copy the run's ``weights/baseline.safetensors`` to ``target`` (written whole, then renamed)."""
    source = Path(outcome.path) / "weights" / "baseline.safetensors"
    if not source.is_file():
        raise PoisonlabError(f"the run wrote no clean reference's weights ({source} is missing; a scikit-learn "
                             f"learner has none)")
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as exc:
        if partial.parent.is_dir():
            partial.unlink(missing_ok=True)  # nothing half-written is left behind
        raise PoisonlabError(f"--save-reference cannot write '{target}': {exc.strerror or exc}; "
                             f"name a file in a writable folder") from None
