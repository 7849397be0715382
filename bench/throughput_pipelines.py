"""The timed pipelines of bench/throughput.py: one epoch each, same model init (same seed), same
data, same batch size, same optimiser (SGD, momentum, Nesterov, ``foreach=True``, as
``poisonlab.train._make_optimizer`` builds it), same loss (``nn.CrossEntropyLoss``).

  poisonlab   ``poisonlab.train.train_model`` (in-memory batches, channels-last, cosine lr)
  art         IBM ART ``PyTorchClassifier(...).fit(x, y, batch_size=B, nb_epochs=1)`` on float32
              numpy arrays prepared before the clock starts (ART's own TensorDataset/DataLoader)
  plain       a plain PyTorch loop: in-memory float tensors, ``randperm``, ``x[idx]``, NCHW
  dataloader  a per-sample map-style Dataset (ToTensor-style uint8 -> float) + DataLoader (MNIST)

Each ``run_*`` builds a fresh model, times only the training epoch and returns images/s.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from poisonlab.data.base import Dataset as PLDataset
from poisonlab.models import build_model
from poisonlab.train import TrainConfig, seed_everything, train_model

try:
    import art  # noqa: F401
    from art.estimators.classification import PyTorchClassifier

    ART_VERSION: str | None = art.__version__
    ART_NOTE = f"adversarial-robustness-toolbox {ART_VERSION}"
    logging.getLogger("art").setLevel(logging.WARNING)  # ART logs every classifier it builds at INFO
except Exception as e:  # noqa: BLE001 - ART is an optional extra: the bench runs without it
    PyTorchClassifier = None
    ART_VERSION = None
    ART_NOTE = (f"ART not importable ({type(e).__name__}: {str(e)[:120]}); install it with "
                "pip install -e '.[bench]' (make bench does)")


@dataclass
class ModelCase:
    """One model of the bench and everything its pipelines share."""

    key: str                              # the name in the JSON and the table
    name: str                             # poisonlab model name
    shape: tuple[int, int, int]
    num_classes: int
    options: dict
    cfg: TrainConfig
    seed: int
    data: str = ""
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # "timed"/"warm" -> (x, y)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)        # same, numpy, for ART
    per_sample: dict[str, torch.utils.data.Dataset] = field(default_factory=dict)        # for the DataLoader loop
    datasets: dict[str, PLDataset] = field(default_factory=dict)                         # for train_model

    def fresh_model(self) -> nn.Module:
        seed_everything(self.seed)
        return build_model(self.name, self.shape, self.num_classes, dict(self.options))

    def set_data(self, x: torch.Tensor, y: torch.Tensor, n_timed: int, classes: list[str]) -> None:
        """Split float32 ``x`` / int64 ``y`` into the timed set (first ``n_timed``) and the warm-up set."""
        for part, sl in (("timed", slice(0, n_timed)), ("warm", slice(n_timed, None))):
            xs, ys = x[sl].contiguous(), y[sl].contiguous()
            self.tensors[part] = (xs, ys)
            self.arrays[part] = (xs.numpy(), ys.numpy())  # shares memory: nothing converted while timed
            self.datasets[part] = PLDataset(xs, ys, list(classes))


def make_sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``poisonlab.train._make_optimizer`` builds for ``optimizer: sgd``."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0, foreach=True)


def run_poisonlab(case: ModelCase, part: str) -> float:
    """Images/s of one ``train_model`` epoch (wall time around the call)."""
    ds = case.datasets[part]
    model = case.fresh_model()
    t0 = time.perf_counter()
    train_model(model, ds, case.cfg, seed=case.seed)
    return len(ds) * case.cfg.epochs / (time.perf_counter() - t0)


def run_art(case: ModelCase, part: str) -> float:
    """Images/s of one ``PyTorchClassifier.fit`` epoch (only the fit call is timed)."""
    x, y = case.arrays[part]
    model = case.fresh_model()
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), optimizer=make_sgd(model, case.cfg),
                            input_shape=case.shape, nb_classes=case.num_classes, clip_values=(0.0, 1.0),
                            device_type="cpu")
    t0 = time.perf_counter()
    clf.fit(x, y, batch_size=case.cfg.batch_size, nb_epochs=1)
    return len(y) / (time.perf_counter() - t0)


def run_plain(case: ModelCase, part: str) -> float:
    """Images/s of one epoch of a plain loop over in-memory tensors: randperm, ``x[idx]``, NCHW."""
    x, y = case.tensors[part]
    model = case.fresh_model()
    model.train()
    opt = make_sgd(model, case.cfg)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(case.seed)
    n, b = len(y), case.cfg.batch_size
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=gen)
    for start in range(0, n, b):
        idx = perm[start:start + b]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def run_dataloader(case: ModelCase, part: str) -> float:
    """Images/s of one epoch of the per-sample Dataset + DataLoader loop (same model, optimiser, loss)."""
    ds = case.per_sample[part]
    model = case.fresh_model()
    model.train()
    opt = make_sgd(model, case.cfg)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(case.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=case.cfg.batch_size, shuffle=True, num_workers=0,
                                         generator=gen)
    t0 = time.perf_counter()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(ds) / (time.perf_counter() - t0)


RUNNERS: dict[str, Callable[[ModelCase, str], float]] = {
    "poisonlab": run_poisonlab,
    "art": run_art,
    "plain": run_plain,
    "dataloader": run_dataloader,
}

LABELS = {
    "poisonlab": "poisonlab train_model",
    "art": "ART PyTorchClassifier.fit",
    "plain": "plain PyTorch loop",
    "dataloader": "Dataset+DataLoader loop",
}


def matmul_gflops(size: int, tries: int) -> float:
    """Best float32 ``torch.matmul`` rate on ``size`` x ``size`` matrices, in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warm-up
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best
