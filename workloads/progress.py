"""A rich progress bar for long runs, or a silent stand-in when progress is off (tests, libraries)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Silent:
    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        return 0

    def advance(self, task: int, amount: float = 1) -> None:
        pass

    def update(self, task: int, **_: Any) -> None:
        pass


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | _Silent]:
    if not enabled:
        yield _Silent()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        yield bar
