"""Where a long scoring stands: per method-seed of a scores directory (OUT/scores/SCENARIO/SITES,
as `fedmeta benchmark evaluate` writes it), whether it is scored, being scored and by whom, or
stopped midway, and how many episodes of each number of shots it holds.

It reads the three files a method-seed can leave (NAME-SEED.json when scored, NAME-SEED.progress.json
while or after being scored midway, NAME-SEED.claim while a process holds it), and the directory's
plan.json (what the `evaluate` runs on it were asked to score: a method-seed no process has
started yet, or one scored at fewer shots than asked, is "to score"), and changes none: safe to
run beside the scoring processes, on a shared directory, as often as wanted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulation.progress import Claim, Plan, Progress, ScoreFiles, describe_devices, made_on

SCORED, SCORING, STOPPED, TO_SCORE = "scored", "scoring", "stopped midway", "to score"


@dataclass
class MethodSeed:
    """One method-seed's state. `episodes`: per number of shots, the episodes it holds (summed over
    sites); `holder`: the process scoring it now (None: nobody); `updated`: its newest file's mtime."""

    method: str
    seed: int
    state: str
    episodes: dict[int, int] = field(default_factory=dict)
    holder: str | None = None
    device: str = "cpu"
    updated: float = 0.0
    problem: str = ""  # a file that cannot be read: what to do about it
    planned: dict[int, int] = field(default_factory=dict)  # per shots, the episodes in all (a progress file says)
    left_s: float | None = None  # being scored: seconds left at the pace of the run scoring it


def _pace(data: dict, kept: int, written: float) -> float | None:
    """Episodes per second the run that wrote a progress file (`data`) scored since it started."""
    run = data.get("run") or {}
    done, elapsed = kept - int(run.get("kept", kept)), written - float(run.get("started", written))
    return done / elapsed if done > 0 and elapsed > 0 else None


def method_seeds(directory: Path) -> list[MethodSeed]:
    """Every method-seed `directory` holds a file of or its plan names, by method then seed."""
    found: dict[ScoreFiles, list[Path]] = {}
    for path in sorted(Path(directory).iterdir()):
        files = ScoreFiles.of(path) if path.is_file() else None
        if files is not None:
            found.setdefault(files, []).append(path)
    stems, asked = Plan(directory).read()
    for stem in stems:
        files = ScoreFiles.of(Path(directory) / f"{stem}.json")
        if files is not None:
            found.setdefault(files, [])
    rows = []
    for files in sorted(found, key=lambda f: (f.name, f.seed)):
        if not found[files]:  # planned, and no process has left a file of it yet
            rows.append(MethodSeed(files.name, files.seed, TO_SCORE, planned=dict(asked)))
            continue
        row = _state(files, found[files])
        if files.stem in stems and row.state == SCORED and any(row.episodes.get(k, 0) < n for k, n in asked.items()):
            row.state, row.planned = TO_SCORE, dict(asked)  # scored at fewer shots or episodes than asked
        rows.append(row)
    return rows


def _state(files: ScoreFiles, paths: list[Path]) -> MethodSeed:
    scores, partial = files.scores, files.progress
    holder = Claim(files.claim).holder()
    row = MethodSeed(files.name, files.seed, STOPPED, holder=holder, updated=max(p.stat().st_mtime for p in paths))
    if scores.is_file():
        try:
            data = json.loads(scores.read_text())
            row.episodes = {int(k): len(v) for k, v in data["acc"].items()}
            row.device = describe_devices(made_on(data))
            if not partial.is_file():  # else a rescore, or more shots, under way or stopped: its progress tells
                row.state = SCORING if holder else SCORED  # the old file stays till the new one is written
                return row
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            row.problem = f"{scores.name} cannot be read: delete it to score {files.stem} again"
    if partial.is_file():
        try:
            data = json.loads(partial.read_text())  # read once: its parts, plan and pace
            row.episodes = Progress.kept_per_shots(data["parts"])
            row.planned = {int(k): int(n) for k, n in (data.get("planned") or {}).items()}
            pace = _pace(data, sum(row.episodes.values()), partial.stat().st_mtime)
            if holder and pace and row.planned:
                row.left_s = max(0.0, sum(row.planned.values()) - sum(row.episodes.values())) / pace
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError):
            row.problem = row.problem or f"{partial.name} cannot be read: delete it ({files.stem} starts over)"
    row.state = SCORING if holder else STOPPED
    return row


def scores_directories(out: Path, scenario: str | None = None) -> list[Path]:
    """The scores directories under an evaluation's `out` (OUT/scores/SCENARIO/SITES)."""
    root = Path(out) / "scores"
    if not root.is_dir():
        return []
    pattern = f"{scenario}/*" if scenario else "*/*"
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def as_text(rows: list[MethodSeed]) -> str:
    """`rows` as aligned plain text (logs and pipes keep it whole) and a count of each state;
    episodes per shots as kept/total, the total from the method-seed's progress file (or another,
    scored one), and the time a live scoring has left at its pace (every shots' episodes counted
    alike: 5-shot ones take longer, so the estimate is low while it scores 1-shot ones)."""
    shots = sorted({k for row in rows for k in (*row.episodes, *row.planned)})
    scored = {k: max((r.episodes.get(k, 0) for r in rows if r.state == SCORED), default=0) for k in shots}
    lines = [["method", "seed", "state", *(f"{k}-shot" for k in shots), "written", "note"]]
    for row in rows:
        total = {k: row.planned.get(k) or scored[k] for k in shots}
        counts = [
            str(row.episodes.get(k, 0)) + ("" if row.state == SCORED or not total[k] else f"/{total[k]}") for k in shots
        ]
        note = row.problem or (row.holder or "" if row.state == SCORING else "")
        if row.left_s is not None:
            note += f"; about {row.left_s / 60:.0f} min left at its pace so far"
        if not note and row.state == SCORED and row.device != "cpu":
            note = f"scored on {row.device}"
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated)) if row.updated else "-"
        lines.append([row.method, str(row.seed), row.state, *counts, written, note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    done, live, ahead = (sum(r.state == state for r in rows) for state in (SCORED, SCORING, TO_SCORE))
    stopped = len(rows) - done - live - ahead
    table.append(
        f"{done} of {len(rows)} method-seeds scored, {live} being scored, {stopped} stopped midway"
        + (f", {ahead} to score" if ahead else "")
    )
    return "\n".join(table)
