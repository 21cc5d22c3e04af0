"""Whether a test left processes behind: members of a process group, zombies not counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.processes import tls_check

BIN = Path(sys.executable).parent
# a child that sleeps a minute; arguments after it land on its command line (a marker to find it by)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def live_members(pgid: int) -> list[str]:
    """`pid command` of every process of group `pgid` that is not a zombie."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in table.splitlines()]
    return [
        f"{r[0]} {r[3] if len(r) > 3 else ''}"
        for r in rows
        if len(r) >= 3 and r[1] == str(pgid) and not r[2].startswith("Z")
    ]


def group_gone(pgid: int, timeout: float = 15.0) -> bool:
    """True once no live process is left in the group (killed processes take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while live_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class Processes:
    """Every process the test starts, each in its own group, killed at the end."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "w") as log:  # the child writes to its own copy of the descriptor
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**_env(), **(env or {})}
            )
        process.log_path = self.logs / f"{name}.log"
        self.started.append(process)
        return process

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int | None, str]:
        """A started process's exit code (None if it outlived `timeout`) and its output."""
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, process.log_path.read_text()

    def kill_all(self) -> None:
        for process in self.started:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    continue


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_port(owner: subprocess.Popen, port: int, ca_cert: Path, timeout: float = 120) -> None:
    """Until a TLS handshake with localhost:port succeeds (while `owner` runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return tls_check("localhost", port, ca_cert)
        except ConnectionError:
            assert owner.poll() is None, owner.log_path.read_text()[-5000:]
            assert time.monotonic() < deadline, f"port {port} did not open within {timeout:.0f} s"
            time.sleep(0.5)
