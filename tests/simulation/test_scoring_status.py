"""`fedmeta benchmark status`: where each method-seed of a scores directory stands, read from the
real files `evaluate` leaves (scores, progress, claims held by a real process)."""

import json
import os
import subprocess
import sys

import numpy as np

from simulation.benchmark import Scores, write_scores
from simulation.progress import Part, Progress, ScoreFiles
from simulation.scoring_status import SCORED, SCORING, STOPPED, as_text, method_seeds

IDENTITY = {"adapter": "FineTune", "model": "abc", "steps": 100}


def _scored(directory, stem, episodes=(6, 6), device=None):
    acc = {shots: np.full(n, 0.5) for shots, n in zip((1, 5), episodes)}
    scores = Scores(stem, acc, dict(acc), {1: {"a": "d1"}, 5: {"a": "d5"}})
    write_scores(directory / f"{stem}.json", scores, {**IDENTITY, **({"device": device} if device else {})})


def _midway(directory, stem, kept):
    """A progress file as a stopped scoring leaves it: `kept` episodes per (shots, site)."""
    progress = Progress(directory / f"{stem}.progress.json", IDENTITY)
    for (shots, site), n in kept.items():
        progress.update(shots, site, f"digest-{shots}-{site}", {0: Part([0.5] * n, [0.6] * n, [])}, final=True)


def test_each_method_seed_is_scored_being_scored_or_stopped(tmp_path, claimant):
    _scored(tmp_path, "fedavg+finetune-0")
    _scored(tmp_path, "fomaml-0", device="cuda")
    _midway(tmp_path, "fedavg+linear-probe-1", {(1, "a"): 3, (1, "b"): 3, (5, "a"): 2})
    _midway(tmp_path, "fomaml-1", {(1, "a"): 4})
    gone = claimant(tmp_path / "fomaml-1.claim")
    gone.kill()
    gone.wait()  # its process ended: stopped, not being scored
    (tmp_path / "local-0.json").write_text("{not json")
    (tmp_path / "headline.md").write_text("not a method-seed")
    live = claimant(tmp_path / "fomaml-2.claim")  # claimed, no episode kept yet
    _midway(tmp_path, "fomaml-2", {})
    rows = {(r.method, r.seed): r for r in method_seeds(tmp_path)}

    assert sorted(rows) == [
        ("fedavg+finetune", 0),
        ("fedavg+linear-probe", 1),
        ("fomaml", 0),
        ("fomaml", 1),
        ("fomaml", 2),
        ("local", 0),
    ]
    assert rows["fedavg+finetune", 0].state == SCORED and rows["fedavg+finetune", 0].episodes == {1: 6, 5: 6}
    assert rows["fomaml", 0].device == "cuda"
    probe = rows["fedavg+linear-probe", 1]
    assert probe.state == STOPPED and probe.episodes == {1: 6, 5: 2} and probe.holder is None
    assert rows["fomaml", 1].state == STOPPED and rows["fomaml", 1].episodes == {1: 4}
    assert rows["fomaml", 2].state == SCORING and rows["fomaml", 2].holder == f"pid {live.pid} on this machine"
    assert rows["local", 0].state == STOPPED and "delete it" in rows["local", 0].problem


def test_the_command_reports_totals_and_names_a_wrong_out(tmp_path):
    scores = tmp_path / "scores" / "new-hospital" / "heldout"
    scores.mkdir(parents=True)
    _scored(scores, "fedavg+finetune-0", episodes=(6, 6))
    _midway(scores, "fomaml-0", {(1, "a"): 3, (1, "b"): 3, (5, "a"): 2})

    def fedmeta(*args):
        return subprocess.run(
            [sys.executable, "-m", "fedmeta", "benchmark", "status", *args], capture_output=True, text=True, timeout=120
        )

    done = fedmeta("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("fomaml "))
    assert line.split()[2:6] == ["stopped", "midway", "6/6", "2/6"]
    assert "1 of 2 method-seeds scored, 0 being scored, 1 stopped midway" in done.stdout
    assert fedmeta("--out", str(tmp_path), "--scenario", "new-classes").returncode == 2
    missing = fedmeta("--out", str(tmp_path / "elsewhere"))
    assert missing.returncode == 2 and "holds no scores" in missing.stderr and "--out" in missing.stderr


def test_a_live_scoring_shows_its_total_and_time_left_at_its_pace(tmp_path, claimant):
    """A run that started 60 s before its last write with 2 episodes kept and now holds 8 of 20
    scores 0.1 episodes/s: 12 left take about 2 minutes."""
    path = tmp_path / "fomaml-0.progress.json"
    progress = Progress(path, IDENTITY)
    progress.plan({1: 10, 5: 10})
    progress.update(1, "a", "d", {0: Part([0.5] * 8, [0.6] * 8, [])}, final=True)
    data = json.loads(path.read_text())
    assert data["planned"] == {"1": 10, "5": 10}
    written = path.stat().st_mtime
    data["run"] = {"started": written - 60.0, "kept": 2}
    path.write_text(json.dumps(data))
    os.utime(path, (written, written))
    live = claimant(tmp_path / "fomaml-0.claim")
    (row,) = method_seeds(tmp_path)
    text = as_text([row])
    live.kill()
    live.wait()
    assert row.state == SCORING and row.planned == {1: 10, 5: 10} and row.episodes == {1: 8}
    assert abs(row.left_s - 120.0) < 1e-6
    assert "8/10" in text and "0/10" in text and "about 2 min left" in text
    (row,) = method_seeds(tmp_path)  # its process gone: stopped, no time left to tell
    assert row.state == STOPPED and row.left_s is None


def test_score_files_names_are_made_and_read_in_one_place(tmp_path):
    files = ScoreFiles(tmp_path, "fedavg+linear-probe", 2)
    assert [p.name for p in (files.scores, files.progress, files.claim)] == [
        "fedavg+linear-probe-2.json",
        "fedavg+linear-probe-2.progress.json",
        "fedavg+linear-probe-2.claim",
    ]
    for path in (files.scores, files.progress, files.claim):
        assert ScoreFiles.of(path) == files  # read back whole: the name keeps its '-', the seed is its own
    for other in ("tuned.json", "headline.md", "fomaml-x.json", "-0.json", "fomaml-0.progress", "fomaml0.json"):
        assert ScoreFiles.of(tmp_path / other) is None, other


def test_more_shots_being_added_to_a_scored_method_seed_show_its_progress_and_devices(tmp_path):
    """A scored method-seed with a progress file beside it (10 shots being added, stopped) reads as
    stopped midway with the progress file's counts, not as scored; a file whose shots two devices
    made names both."""
    _scored(tmp_path, "fomaml-0")
    _midway(tmp_path, "fomaml-0", {(1, "a"): 6, (5, "a"): 6, (10, "a"): 2})
    acc = {shots: np.full(6, 0.5) for shots in (1, 10)}
    mixed = Scores(
        "fomaml-1", acc, dict(acc), {1: {"a": "d1"}, 10: {"a": "d10"}}, made_on={1: {"a": "cpu"}, 10: {"a": "cuda"}}
    )
    write_scores(tmp_path / "fomaml-1.json", mixed, IDENTITY)
    rows = {(r.method, r.seed): r for r in method_seeds(tmp_path)}
    assert rows["fomaml", 0].state == STOPPED and rows["fomaml", 0].episodes == {1: 6, 5: 6, 10: 2}
    assert rows["fomaml", 1].state == SCORED and rows["fomaml", 1].device == "cpu at 1 shot; cuda at 10 shots"
    assert "scored on cpu at 1 shot; cuda at 10 shots" in as_text(list(rows.values()))
