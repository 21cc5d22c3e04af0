"""A progress bar while a site folder's images load and preprocess (shown only on a terminal,
and only when there are enough images to wait for)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

SHOWN_FROM = 200  # images: below this a folder loads in about a second


@contextmanager
def loading_progress(console: Console, what: str = "loading images") -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback for `check_folder`, drawing a rich bar."""
    bar = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    )
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if total < SHOWN_FROM:
            return
        if task is None:
            bar.start()
            task = bar.add_task(what, total=total)
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        bar.stop()
