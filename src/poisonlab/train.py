"""The fast in-memory trainer.

Batches are sliced from tensors held in memory (no per-sample ``Dataset``/``DataLoader``),
CNN inputs go channels-last, the optimiser is SGD (momentum) or Adam with a cosine, step
or constant learning-rate schedule. Model selection, if asked for, reads a validation
split carved from the *training* data (never the test set). Same seed, same weights on CPU.
"""
from __future__ import annotations

import copy
import ctypes
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import progress
from .data.base import Dataset
from .checks import MAX_BATCH, MAX_EPOCHS, MAX_LR, is_number, is_whole, need_int, need_number
from .errors import PoisonlabError, shown


@dataclass
class TrainConfig:
    """Training hyperparameters (``train:`` in a config file)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_every: int = 10
    step_gamma: float = 0.1
    select: Literal["last", "best-val"] = "last"
    eval_batch_size: int = 512  # images per forward when evaluating (2048 held 3x the activations of 512)
    channels_last: bool = True
    trainable: Literal["all", "last"] = "all"
    """``last``: only the last ``nn.Linear`` learns, the rest frozen in eval mode (features from
    ``model.weights``, the transfer setting of Shafahi et al. 2018); applied by ``fit_learner``."""

    def validate(self, where: str = "train") -> None:
        """One-line errors naming ``where.key`` and the allowed range: epochs 1..10000, batch sizes
        1..2**20, step_every 1..10000, lr in (0, 10], momentum in [0, 1), weight_decay in [0, 1],
        step_gamma in (0, 1]; an integer setting must be an integer (not 1e12)."""
        for key, hi in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH), ("step_every", MAX_EPOCHS),
                        ("eval_batch_size", MAX_BATCH)):
            v = getattr(self, key)
            if not is_whole(v):
                raise PoisonlabError(f"{where}.{key} must be an integer, got {shown(v)}")
            if v < 1:
                raise PoisonlabError(f"{where}.{key} must be >= 1, got {v}")
            need_int(v, f"{where}.{key}", 1, hi)
        if is_number(self.lr) and self.lr <= 0:
            raise PoisonlabError(f"{where}.lr must be > 0, got {self.lr}")
        need_number(self.lr, f"{where}.lr", 0, MAX_LR, low_open=True)
        need_number(self.momentum, f"{where}.momentum", 0, 1, high_open=True)
        need_number(self.weight_decay, f"{where}.weight_decay", 0, 1)
        need_number(self.step_gamma, f"{where}.step_gamma", 0, 1, low_open=True)
        if self.optimizer not in ("sgd", "adam"):
            raise PoisonlabError(f"{where}.optimizer must be sgd or adam, got {shown(self.optimizer)}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise PoisonlabError(f"{where}.schedule must be cosine, step or constant, got {shown(self.schedule)}")
        if self.trainable not in ("all", "last"):
            raise PoisonlabError(f"{where}.trainable must be all or last, got {shown(self.trainable)}")


@dataclass
class TrainResult:
    """What training did: per-epoch history, the chosen epoch, seconds spent."""

    history: list[dict[str, float]] = field(default_factory=list)
    chosen_epoch: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PoisonlabError("--device cuda asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise PoisonlabError(f"unknown device '{device}'; use cpu, cuda or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy so that model initialisation is reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _prepare(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, torch.float32)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PoisonlabError("the model has no trainable parameters")
    # foreach: one multi-tensor kernel call per update step instead of a Python loop over the
    # parameters; the same arithmetic, so the weights are bit-identical to the per-tensor loop
    # (fused=True would be faster still on CPU but rounds differently)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0, foreach=True)


def _lr_factor(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + float(np.cos(np.pi * step / max(total_steps, 1))))
    if cfg.schedule == "step":
        return cfg.step_gamma ** ((step // steps_per_epoch) // cfg.step_every)
    return 1.0


_HEAP_KEPT = False


def keep_heap() -> None:
    """On glibc (Linux), keep freed memory in the process instead of handing the top of the heap
    back to the OS after every training step: with glibc's defaults the step's activation
    buffers (about 10 MB each for the MNIST CNN at batch 256) are trimmed and faulted back in
    each step, which made a run's first training much slower than its second. Sets
    ``M_MMAP_THRESHOLD`` 64 MiB, ``M_TRIM_THRESHOLD`` 1 GiB and ``M_TOP_PAD`` 64 MiB once per
    process; numbers are unchanged. ``POISONLAB_KEEP_HEAP=0`` leaves malloc alone."""
    global _HEAP_KEPT
    if _HEAP_KEPT or os.environ.get("POISONLAB_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return
    _HEAP_KEPT = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    for option, value in ((-3, 64 << 20), (-1, 1 << 30), (-2, 64 << 20)):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD
        libc.mallopt(ctypes.c_int(option), ctypes.c_int(value))


_INPLACE_AFTER = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d)


def _inplace_relus(model: nn.Module) -> list[nn.ReLU]:
    """The ReLUs that may run in place while training: each directly after a conv, linear,
    batch-norm or average-pool layer inside an ``nn.Sequential`` (so only that ReLU reads the
    layer's output, and none of those layers keeps its output for the backward pass), and none
    at all when a hook is attached anywhere (a hook could hold the tensor the ReLU overwrites).
    In place gives the same values and gradients bit for bit, less one allocation and one pass
    over memory per ReLU."""
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
           for m in model.modules()):
        return []
    found = []
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq.children())
            found += [cur for prev, cur in zip(kids, kids[1:])
                      if type(cur) is nn.ReLU and not cur.inplace and isinstance(prev, _INPLACE_AFTER)]
    return found


class _BatchGather:
    """Copies the rows of a batch into buffers allocated once, ready for the model.

    ``batch(idx)`` equals ``_prepare(x[idx], device, channels_last)`` bit for bit, but
    gathers with ``index_select(out=...)`` straight into a reused (channels-last) float32
    buffer instead of allocating a fresh tensor, then another for the layout, every step.
    The buffer is overwritten by the next call: use a batch before asking for the next one
    (the trainer's forward/backward is done by then).
    """

    def __init__(self, x: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool) -> None:
        self.x = x.detach()  # a data set built from optimised poisons may still require grad
        rows = min(batch_size, len(x))
        fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
        self.out = torch.empty((rows, *x.shape[1:]), dtype=torch.float32, device=device, memory_format=fmt)
        # gather straight into the output when no dtype/device conversion is needed
        self.direct = x.dtype == torch.float32 and x.device == self.out.device
        self.raw = None if self.direct else torch.empty((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        m = len(idx)
        if idx.device != self.x.device:
            idx = idx.to(self.x.device)
        out = self.out[:m]
        if self.direct:
            return torch.index_select(self.x, 0, idx, out=out)
        return out.copy_(torch.index_select(self.x, 0, idx, out=self.raw[:m]))


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512,
                   device: torch.device | str = "cpu", channels_last: bool = True, desc: str | None = None) -> torch.Tensor:
    """Logits for every row of ``x`` (eval mode, batched, returned on the CPU)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outs = []
    relus = _inplace_relus(model)  # the same values, one activation buffer less per ReLU
    for relu in relus:
        relu.inplace = True
    try:
        with progress.bar(desc or "evaluate", len(x)) as bar:
            for start in range(0, len(x), batch_size):
                xb = _prepare(x[start:start + batch_size], device, channels_last)
                outs.append(model(xb).float().cpu())
                bar.advance(len(xb))
    finally:
        model.train(was_training)
        for relu in relus:
            relu.inplace = False
    return torch.cat(outs) if outs else torch.empty(0)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: torch.device | str = "cpu",
            desc: str | None = None) -> torch.Tensor:
    """Predicted class of every row of ``x``."""
    return predict_logits(model, x, batch_size, device, desc=desc).argmax(1)


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], base_lrs: list[float],
           factors: list[float], perm: torch.Tensor, batch_size: int, gather: _BatchGather, y_all: torch.Tensor,
           y_buf: torch.Tensor, bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of steps over ``perm``; the summed loss and the count of right answers."""
    loss_fn = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=y_all.device)
    correct = torch.zeros((), device=y_all.device, dtype=torch.int64)
    current = optimizer.param_groups[0]["lr"] / base_lrs[0] if base_lrs[0] else None
    for b, factor in enumerate(factors):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        xb = gather.batch(idx)
        yb = torch.index_select(y_all, 0, idx, out=y_buf[:len(idx)])
        if factor != current:
            current = factor
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
        logits = model(xb)
        loss = loss_fn(logits, yb)
        for p in params:  # = optimizer.zero_grad(set_to_none=True), without its per-call wrappers
            p.grad = None
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        bar.advance(len(yb))
    return loss_sum, correct


def train_model(model: nn.Module, train: Dataset, cfg: TrainConfig, seed: int = 0,
                device: torch.device | str = "cpu", val: Dataset | None = None, desc: str = "train") -> TrainResult:
    """Train ``model`` in place on ``train``; return the history.

    Shuffling uses its own seeded generator, so the same seed gives the same weights.
    With ``cfg.select == "best-val"`` the weights of the epoch with the best accuracy on
    ``val`` (a split of the training data) are kept.

    >>> from poisonlab.models import build_model
    >>> ds = Dataset(torch.rand(64, 4), torch.randint(0, 2, (64,)), ["a", "b"])
    >>> r = train_model(build_model("mlp", (4,), 2), ds, TrainConfig(epochs=2, batch_size=16))
    >>> len(r.history)
    2
    """
    cfg.validate()
    if len(train) == 0:
        raise PoisonlabError("the training set is empty")
    keep_heap()
    if cfg.select == "best-val" and (val is None or len(val) == 0):
        raise PoisonlabError("train.select 'best-val' needs a validation split; set data.val_fraction > 0")
    device = torch.device(device)
    model.to(device)
    if cfg.channels_last and train.is_image:
        model.to(memory_format=torch.channels_last)
    x_all = train.x.to(device) if device.type == "cuda" else train.x
    y_all = train.y.to(device)
    gen = torch.Generator().manual_seed(seed)
    optimizer = _make_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n = len(train)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    # one epoch of the schedule at a time (memory: steps per epoch, never the whole run); the
    # learning rate is only written into the optimiser when it changes (never, for "constant")
    gather = _BatchGather(x_all, cfg.batch_size, device, cfg.channels_last)
    y_buf = torch.empty(min(cfg.batch_size, n), dtype=y_all.dtype, device=y_all.device)
    result = TrainResult()
    best_acc, best_state = -1.0, None
    start_time = time.perf_counter()
    relus = _inplace_relus(model)
    for relu in relus:
        relu.inplace = True
    model.train()
    try:
        with progress.bar(desc, steps_per_epoch * cfg.epochs * min(cfg.batch_size, n)) as bar:
            for epoch in range(cfg.epochs):
                perm = torch.randperm(n, generator=gen)
                if device.type == "cuda":
                    perm = perm.to(device)
                factors = [_lr_factor(cfg, s, steps_per_epoch * cfg.epochs, steps_per_epoch)
                           for s in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)]
                loss_sum, correct = _epoch(model, optimizer, params, base_lrs, factors, perm, cfg.batch_size, gather,
                                           y_all, y_buf, bar)
                record = {"epoch": epoch + 1, "loss": float(loss_sum) / n, "train_acc": float(correct) / n}
                # validation accuracy: every epoch when it selects the epoch, else after the last one only
                if val is not None and len(val) and (cfg.select == "best-val" or epoch == cfg.epochs - 1):
                    preds = predict(model, val.x, cfg.eval_batch_size, device, desc="validate")
                    record["val_acc"] = float((preds == val.y).float().mean())
                    if cfg.select == "best-val" and record["val_acc"] > best_acc:
                        best_acc, best_state = record["val_acc"], copy.deepcopy(model.state_dict())
                        result.chosen_epoch = epoch + 1
                result.history.append(record)
                bar.describe(f"{desc} ep {epoch + 1}/{cfg.epochs} loss {record['loss']:.3f}")
    finally:
        for relu in relus:
            relu.inplace = False
    if cfg.select == "best-val" and best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.chosen_epoch = cfg.epochs
    result.seconds = time.perf_counter() - start_time
    result.images_per_second = n * cfg.epochs / max(result.seconds, 1e-9)
    model.eval()
    return result
