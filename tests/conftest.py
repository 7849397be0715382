"""Shared fixtures: progress bars off, deterministic torch, a tiny image data set."""
from __future__ import annotations

import os

import pytest
import torch

from poisonlab import progress
from poisonlab.data.base import Dataset


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers) each worker trains on one torch thread,
    so that two workers share two cores without oversubscribing them (the golden tests set
    their own thread count: tests/golden/capture.py)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    progress.set_enabled(False)
    torch.manual_seed(0)
    yield
    progress.set_enabled(None)


@pytest.fixture
def tiny_images() -> Dataset:
    """30 images (1x6x6) of 3 classes: 10 rows each, labels 0,1,2 repeating."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 1, 6, 6, generator=g) * 0.5
    y = torch.arange(30) % 3
    return Dataset(x, y, ["zero", "one", "two"])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread (the test machine's two cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
