"""Rich progress bars (rate and ETA) for every training and evaluation loop.

Bars are shown on a terminal and hidden otherwise (pipes, CI, tests), or when
``set_enabled(False)`` was called (``poisonlab run --quiet``).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_enabled: bool | None = None
console = Console(stderr=True)


def set_enabled(flag: bool | None) -> None:
    """Force bars on or off; ``None`` restores the default (on only for a terminal)."""
    global _enabled
    _enabled = flag


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


class _Bar:
    """One task of a progress display; ``advance(n, **fields)`` moves it."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **fields)

    def describe(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        from rich.text import Text

        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


@contextlib.contextmanager
def bar(description: str, total: float, unit: str = "img") -> Iterator[_Bar]:
    """A progress bar with count, rate in ``unit``/s, elapsed time and ETA."""
    if not enabled():
        yield _Bar(None, None)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)
