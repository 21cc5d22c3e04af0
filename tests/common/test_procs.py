"""Stopping what a run left behind: real child processes, found through /proc by command line."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.procs import command_line, descendants, terminate_descendants

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

SLEEP = "import time; time.sleep(60)"


def _sleeper(*marker: str) -> subprocess.Popen:
    """A child that sleeps, with `marker` on its command line (as Ray's processes carry Ray's path)."""
    return subprocess.Popen([sys.executable, "-c", SLEEP, *marker])


def _wait(child: subprocess.Popen) -> int | None:
    try:
        return child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def test_only_the_children_whose_command_line_matches_are_stopped(tmp_path):
    marker = str(tmp_path / "site-packages" / "ray" / "gcs_server")
    matching, other = _sleeper(marker), _sleeper("unrelated")
    try:
        time.sleep(0.2)  # /proc shows the exec'd command line
        assert {matching.pid, other.pid} <= set(descendants(os.getpid()))
        assert marker in command_line(matching.pid)
        assert terminate_descendants(str(tmp_path / "site-packages" / "ray")) == [matching.pid]
        assert _wait(matching) == -15  # SIGTERM
        assert other.poll() is None, "a process without the marker is left alone"
        assert terminate_descendants(str(tmp_path / "site-packages" / "ray")) == []  # gone: nothing to stop
    finally:
        for child in (matching, other):
            child.kill()
            child.wait()
