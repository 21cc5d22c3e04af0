"""How every fedmeta command fails: messages on stderr that name the problem and its fix (the
packages below raise errors written that way), and an exit code the command documents: 2 for bad
input (options, config files, data, a missing file), 1 for a `--check` that found problems, other
codes where a command tells a supervisor what to do (`fedmeta site`, `fedmeta coordinator`)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

BAD_INPUT = 2
PROBLEMS_FOUND = 1


def report(error: Exception | str, label: str = "error") -> None:
    Console(stderr=True).print(f"[red]{label}:[/red] {error}", highlight=False, soft_wrap=True)


def fail(error: Exception | str, code: int = BAD_INPUT) -> NoReturn:
    report(error)
    raise typer.Exit(code) from (error if isinstance(error, BaseException) else None)


def check_result(problems: list[str], ready: str) -> None:
    """`--check`: every problem found (exit 1), or what is ready."""
    for problem in problems:
        report(problem, "problem")
    if problems:
        raise typer.Exit(PROBLEMS_FOUND)
    Console().print(ready, highlight=False, soft_wrap=True)
