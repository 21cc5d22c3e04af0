"""Children of `fedmeta coordinator`/`fedmeta site` never outlive them."""

import subprocess
import sys
import time

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
