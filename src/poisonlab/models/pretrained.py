"""Starting a network from weights trained elsewhere (``model.weights``): a feature extractor
pretrained on other data, as in the transfer setting of Poison Frogs (Shafahi et al. 2018,
Sec. 4.1: Inception-v3 trained on ImageNet, its last layer retrained on dog vs fish).

The file is safetensors (never pickle). Every tensor must match the model by name and shape,
except the last linear layer's, which may be absent or of another shape (another number of
classes): it is then left at its fresh initialisation and trained by the run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import PoisonlabError

MAX_WEIGHTS_BYTES = 4 << 30
"""The largest weights file read (4 GiB)."""


def weights_digest(path: str | Path) -> str:
    """blake2b of the file's bytes (a run or grid cell from other weights is another result)."""
    p = _checked(path)
    h = hashlib.blake2b(digest_size=20)
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PoisonlabError(f"model.weights file '{p}' not found (give a .safetensors file, e.g. a run's "
                             f"weights/baseline.safetensors or one written by poisonlab run --save-reference)")
    size = os.path.getsize(p)
    if size > MAX_WEIGHTS_BYTES:
        raise PoisonlabError(f"model.weights file '{p}' holds {size} bytes; at most {MAX_WEIGHTS_BYTES} are read")
    return p


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; one-line error when it is missing, too large or not one."""
    from safetensors.torch import load_file

    p = _checked(path)
    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types
        raise PoisonlabError(f"model.weights file '{p}' is not a valid safetensors file: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the file's tensors into ``model``; the names of the last linear layer's tensors left at
    their initialisation (absent from the file or of another shape). Any other missing, extra or
    mismatched tensor is a one-line error."""
    from .freeze import last_linear

    state = read_weights(path)
    own = model.state_dict()
    try:
        last = last_linear(model)
        free = {f"{last}.weight", f"{last}.bias"}
    except PoisonlabError:
        free = set()
    extra = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - free)
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape and k not in free)
    for what, names in (("holds tensors the model lacks", extra), ("lacks tensors of the model", missing)):
        if names:
            raise PoisonlabError(f"model.weights file '{path}' {what}: {', '.join(names[:4])}"
                                 f"{' ...' if len(names) > 4 else ''} (weights of another architecture?)")
    if wrong:
        k = wrong[0]
        raise PoisonlabError(f"model.weights file '{path}': tensor {k} has shape {tuple(state[k].shape)}, the model's "
                             f"is {tuple(own[k].shape)} (only the last linear layer may differ)")
    left = sorted(k for k in free if k in own and (k not in state or state[k].shape != own[k].shape))
    with torch.no_grad():
        for k, v in own.items():
            if k not in left:
                v.copy_(state[k].to(v.dtype))
    return left
