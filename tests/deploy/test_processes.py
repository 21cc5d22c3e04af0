"""Children of `fedmeta coordinator`/`fedmeta site` never outlive them."""

import subprocess
import sys
import time

import pytest

from tests.procs import live_members

SUPERVISOR = """
import sys, time
from pathlib import Path
from deploy.processes import Child
child = Child([sys.executable, "-c", "import time; time.sleep(300)"], Path(sys.argv[1]))
print(child.process.pid, flush=True)
time.sleep(300)
"""


def test_a_child_dies_with_its_supervisor_even_after_sigkill(tmp_path):
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True
    )
    child_pid = int(supervisor.stdout.readline())
    assert live_members(child_pid)  # the child leads its own process group
    supervisor.kill()  # SIGKILL: no handler, no cleanup code runs
    supervisor.wait()
    deadline = time.monotonic() + 10
    while live_members(child_pid):
        assert time.monotonic() < deadline, "the child outlived its supervisor"
        time.sleep(0.1)


def test_the_death_signal_is_prepared_in_the_parent_not_after_fork(tmp_path, monkeypatch):
    """Loading a library in the forked child can deadlock while other threads run: after the
    parent has resolved prctl once, a child starts with library loading made impossible."""
    import ctypes

    from deploy.processes import Child, die_with_parent

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    assert die_with_parent() is not None

    def no_loading(*args, **kwargs):
        raise AssertionError("a library was loaded after fork")

    monkeypatch.setattr(ctypes, "CDLL", no_loading)
    child = Child([sys.executable, "-c", "pass"], tmp_path / "child.log")
    assert child.process.wait(timeout=30) == 0
    child.stop()
