"""Child processes (Flower's SuperLink and SuperNode) and the network checks around them.

Each child runs in its own process group with its output teed to a log file, so stopping it
stops whatever it spawned (SuperExec, ServerApp/ClientApp processes) too. It also gets SIGTERM
when its supervisor dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from common.procs import descendants


def flower_command(name: str) -> str:
    """`flower-superlink` etc. from this Python's environment (also when it is not on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH: install fedmeta's dependencies (flwr 1.42)"
        )
    return found


def child_env() -> dict[str, str]:
    """The environment for Flower's children: this Python's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class Child:
    """A process in its own group whose output lines go to `log_file` and to `echo`, last lines kept."""

    def __init__(
        self,
        argv: Sequence[str],
        log_file: Path,
        env: dict[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ):
        self.argv = list(argv)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.tail: deque[str] = deque(maxlen=200)
        self._log = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 -- open while the child runs; stop() closes it
        self._echo = echo
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or child_env(),
            cwd=cwd,
            start_new_session=True,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent(),
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None  # started with stdout=PIPE
        for line in self.process.stdout:
            self.tail.append(line.rstrip("\n"))
            self._log.write(line)
            self._log.flush()
            if self._echo is not None:
                self._echo(line.rstrip("\n"))

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return "\n".join(self.tail)

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole group and to every descendant that left it (Flower's SuperLink
        starts its SuperExec in a session of its own), then SIGKILL whatever is left after `grace`
        seconds."""
        groups = {self.process.pid} | {pgid for pgid in map(_pgid, descendants(self.process.pid)) if pgid is not None}
        groups.discard(os.getpgrp())  # never our own
        if self.process.poll() is None or len(groups) > 1:
            for group in groups:
                _signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
                if self.process.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(0.1)
                else:
                    time.sleep(0.1)
        for group in groups:  # stragglers (superexec, apps)
            _signal_group(group, signal.SIGKILL)
        self.process.wait()
        self._reader.join(timeout=5)
        self._log.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is left (zombies of our own children count until reaped)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@functools.cache
def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux for SIGTERM when the fedmeta process that started the child
    dies, even by SIGKILL, so a SuperLink or SuperNode never outlives its supervisor (None
    elsewhere).

    libc and its `prctl` are looked up here, in the parent: a child forked while other threads
    run (log pumps, gRPC) may only call what is already loaded; loading a library after fork can
    deadlock on a lock another thread held at the fork. The child then makes one prepared call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    PR_SET_PDEATHSIG = 1
    sigterm = int(signal.SIGTERM)
    return lambda: prctl(PR_SET_PDEATHSIG, sigterm)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Unreachable(ConnectionError):
    """Nobody answers at host:port yet: worth retrying."""


class TLSRefused(ConnectionError):
    """Something answers, but the TLS check fails: retrying will not help."""


def tls_check(host: str, port: int, ca_cert: Path, timeout: float = 10.0) -> None:
    """A TLS handshake with host:port, trusting only `ca_cert` and checking the host name."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as error:
        if error.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            raise TLSRefused(
                f"the coordinator's certificate is not valid for the name {host!r}: set `coordinator` in "
                "site.toml to one of the hosts it was provisioned for (fedmeta provision new --host ...)"
            ) from error
        raise TLSRefused(
            f"the server at {host}:{port} presented a certificate "
            f"that {ca_cert} does not trust ({error.verify_message}): "
            "use the ca.pem from your consortium's bundle, and check that this address is your coordinator"
        ) from error
    except ssl.SSLError as error:
        raise TLSRefused(
            f"{host}:{port} does not speak TLS ({error.reason}): is this the coordinator's fleet port?"
        ) from error
    except (TimeoutError, ConnectionRefusedError, socket.gaierror, OSError) as error:
        raise Unreachable(f"cannot reach the coordinator at {host}:{port} ({error})") from error


def wait_until(
    check: Callable[[], None],
    max_wait: float,
    on_retry: Callable[[str, float], None] | None = None,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> None:
    """Call `check` until it stops raising `Unreachable`, backing off exponentially; `max_wait` 0 waits forever."""
    start, delay = time.monotonic(), first_delay
    while True:
        try:
            return check()
        except Unreachable as error:
            waited = time.monotonic() - start
            if max_wait and waited + delay > max_wait:
                raise Unreachable(f"{error}; gave up after {waited:.0f} s (max-wait {max_wait:.0f} s)") from error
            if on_retry is not None:
                on_retry(str(error), delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
