"""Processes below this one, read from Linux's /proc (elsewhere: none), for stopping what a run
started and left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (Linux /proc; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """`pid`'s command line, arguments joined by spaces ("" when it is gone or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def terminate_descendants(match: str, pid: int | None = None, grace: float = 5.0) -> list[int]:
    """SIGTERM to every process below `pid` (default: this one) whose command line contains
    `match`, then SIGKILL to those of them still running `grace` seconds later; returns their pids.
    Processes that are already gone are skipped (an exited child not yet reaped counts as gone)."""
    stopped = []
    for child in descendants(os.getpid() if pid is None else pid):
        if match in command_line(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
                stopped.append(child)
    deadline = time.monotonic() + grace
    running = stopped
    while running := [child for child in running if match in command_line(child)]:
        if time.monotonic() >= deadline:
            for child in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            break
        time.sleep(0.05)
    return stopped
