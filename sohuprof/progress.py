"""Progress bars on stderr for long work (off when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress"]


def _columns(unit: str) -> list[Any]:
    """The bar's columns: byte counts as MB/GB (``unit="bytes"``), else ``done/total unit``."""
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    counts = [DownloadColumn()] if unit == "bytes" else [MofNCompleteColumn(), TextColumn(unit)]
    return [TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn()]


@contextmanager
def progress(description: str, total: float, *, enabled: bool | None = None,
             unit: str = "") -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)``; draws a rich progress bar on stderr while the block runs.

    ``enabled=None`` shows the bar only when stderr is a terminal, so logs and pipes stay clean.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*_columns(unit), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
