"""Child processes (Flower's SuperLink and SuperNode) and the network checks around them.

Each child runs in its own process group with its output teed to a log file, so stopping it
stops whatever it spawned (SuperExec, ServerApp/ClientApp processes) too. It also gets SIGTERM
when its supervisor dies, however it dies.
"""

from __future__ import annotations

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


def flower_command(name: str) -> str:
    """`flower-superlink` etc. from this Python's environment (also when it is not on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH: install fedmeta's dependencies (flwr 1.42)")
    return found


def child_env() -> dict[str, str]:
    """The environment for Flower's children: this Python's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class Child:
    """A process in its own group whose output lines go to `log_file` and to `echo`, last lines kept."""

    def __init__(self, argv: Sequence[str], log_file: Path, env: dict[str, str] | None = None,
                 echo: Callable[[str], None] | None = None, cwd: Path | None = None):
        self.argv = list(argv)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.tail: deque[str] = deque(maxlen=200)
        self._log = open(log_file, "a", encoding="utf-8")
        self._echo = echo
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env or child_env(), cwd=cwd, start_new_session=True, text=True, errors="replace",
                                        preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
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
        """SIGTERM to the whole group, then SIGKILL whatever is left after `grace` seconds."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # stragglers in the group (superexec, apps)
        self.process.wait()
        self._reader.join(timeout=5)
        self._log.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the fedmeta process that started it dies, even by
    SIGKILL, so a SuperLink or SuperNode never outlives its supervisor (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Unreachable(ConnectionError):
    """Nobody answers at host:port yet: worth retrying."""


class TLSRefused(ConnectionError):
    """Something answers, but the TLS check fails: retrying will not help."""


def tls_check(host: str, port: int, ca_cert: Path, timeout: float = 10.0) -> None:
    """A TLS handshake with host:port, trusting only `ca_cert` and checking the host name."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as error:
        if error.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            raise TLSRefused(f"the coordinator's certificate is not valid for the name {host!r}: set `coordinator` in "
                             "site.toml to one of the hosts it was provisioned for (fedmeta provision new --host ...)") from error
        raise TLSRefused(f"the server at {host}:{port} presented a certificate that {ca_cert} does not trust ({error.verify_message}): "
                         "use the ca.pem from your consortium's bundle, and check that this address is your coordinator") from error
    except ssl.SSLError as error:
        raise TLSRefused(f"{host}:{port} does not speak TLS ({error.reason}): is this the coordinator's fleet port?") from error
    except (ConnectionRefusedError, socket.timeout, socket.gaierror, OSError) as error:
        raise Unreachable(f"cannot reach the coordinator at {host}:{port} ({error})") from error


def wait_until(check: Callable[[], None], max_wait: float, on_retry: Callable[[str, float], None] | None = None,
               first_delay: float = 1.0, max_delay: float = 30.0) -> None:
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
