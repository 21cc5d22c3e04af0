"""Stopping what a run left behind: real child processes, found through /proc by command line."""

import os
import time
from pathlib import Path

import pytest

from common.procs import command_line, descendants, terminate_descendants
from tests.procs import SLEEPER, Processes

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_only_the_children_whose_command_line_matches_are_stopped(tmp_path):
    marker = str(tmp_path / "site-packages" / "ray" / "gcs_server")
    procs = Processes(tmp_path)
    matching, other = procs.start("matching", [*SLEEPER, marker]), procs.start("other", [*SLEEPER, "unrelated"])
    try:
        time.sleep(0.2)  # /proc shows the exec'd command line
        assert {matching.pid, other.pid} <= set(descendants(os.getpid()))
        assert marker in command_line(matching.pid)
        assert terminate_descendants(str(tmp_path / "site-packages" / "ray")) == [matching.pid]
        assert procs.finish(matching, 10)[0] == -15  # SIGTERM
        assert other.poll() is None, "a process without the marker is left alone"
        assert terminate_descendants(str(tmp_path / "site-packages" / "ray")) == []  # gone: nothing to stop
    finally:
        procs.kill_all()


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    marker = str(tmp_path / "site-packages" / "ray" / "raylet")
    stubborn = [
        SLEEPER[0],
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)",
        marker,
    ]
    procs = Processes(tmp_path)
    child = procs.start("stubborn", stubborn)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in child.log_path.read_text():  # SIGTERM is ignored from here on
            assert time.monotonic() < deadline and child.poll() is None, child.log_path.read_text()
            time.sleep(0.05)
        started = time.monotonic()
        assert terminate_descendants(str(tmp_path / "site-packages" / "ray"), grace=0.5) == [child.pid]
        assert time.monotonic() - started >= 0.5, "SIGKILL waits out the grace period"
        assert procs.finish(child, 10)[0] == -9  # SIGTERM ignored, SIGKILL after 0.5 s
    finally:
        procs.kill_all()
