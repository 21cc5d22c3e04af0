"""`fedmeta site`: check everything a site can check locally, then run its SuperNode.

Before connecting: the bundle's files (CA certificate, the 0600 authentication key), the data
(read and validated exactly as the ClientApp will read it), the device. Then a TLS handshake
with the coordinator, retried with backoff while it is not up. Then Flower's SuperNode with TLS,
the site's key and `--node-config` (site name, data dir, device), restarted with backoff if it
drops out; a refused key or an untrusted certificate stops it with the reason.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from deploy.config import ConfigError, SiteConfig
from deploy.processes import Child, TLSRefused, Unreachable, child_env, flower_command, tls_check, wait_until

NOT_REGISTERED = ("Failed to activate SuperNode", "No SuperNode found with the given public key")
BAD_CERTIFICATE = ("CERTIFICATE_VERIFY_FAILED",)


class SiteRefused(ConnectionError):
    """The coordinator answered, and said no: retrying will not help."""


@dataclass(frozen=True)
class SiteCheck:
    problems: list[str]
    summary: str  # what the coordinator will learn: name, role, counts


def check_site(cfg: SiteConfig) -> SiteCheck:
    """Everything wrong with this site that can be found without the coordinator."""
    problems: list[str] = []
    if not cfg.ca_cert.is_file():
        problems.append(f"ca-cert {cfg.ca_cert}: no such file (it comes with your site bundle)")
    else:
        try:
            ca = x509.load_pem_x509_certificate(cfg.ca_cert.read_bytes())
            if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                problems.append(f"ca-cert {cfg.ca_cert} is not a CA certificate: use the bundle's ca.pem")
        except (ValueError, x509.ExtensionNotFound) as error:
            problems.append(f"ca-cert {cfg.ca_cert} is not a PEM CA certificate ({error}): use the bundle's ca.pem")
    if not cfg.auth_key.is_file():
        problems.append(f"auth-key {cfg.auth_key}: no such file (it comes with your site bundle)")
    else:
        if stat.S_IMODE(cfg.auth_key.stat().st_mode) & 0o077:
            problems.append(f"auth-key {cfg.auth_key}: readable by others; run `chmod 600 {cfg.auth_key}`")
        try:
            if not isinstance(
                load_ssh_private_key(cfg.auth_key.read_bytes(), password=None), ec.EllipticCurvePrivateKey
            ):
                problems.append(
                    f"auth-key {cfg.auth_key}: not an EC key; "
                    "Flower's SuperNode authentication needs the bundle's auth.key"
                )
        except ValueError as error:
            problems.append(f"auth-key {cfg.auth_key}: not an OpenSSH private key ({error}); use the bundle's auth.key")
    try:
        from common.device import resolve_device

        resolve_device(cfg.device)
    except ValueError as error:
        problems.append(f"device: {error}")
    if cfg.kernels == "native":  # the site asked for the fused C kernels: they must build here
        from common.native import resolve_kernels
        from common.native.build import NativeKernelsUnavailable

        try:
            resolve_kernels("native")
        except NativeKernelsUnavailable as error:
            problems.append(f"kernels: {error}")
    summary = ""
    try:
        summary = _check_data(cfg)
    except (ValueError, FileNotFoundError, OSError) as error:  # DataError is a ValueError listing every problem
        problems.append(f"data: {error}")
    try:
        free_port_check(cfg.runtime_port)
    except OSError:
        problems.append(
            f"runtime-port {cfg.runtime_port} on 127.0.0.1 is in use (another SuperNode?): "
            "set another runtime-port in site.toml"
        )
    return SiteCheck(problems, summary)


def free_port_check(port: int) -> None:
    """Raises OSError if something listens on 127.0.0.1:port (connections lingering in TIME_WAIT
    after a crash do not count: the SuperNode binds with SO_REUSEADDR too)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def _check_data(cfg: SiteConfig) -> str:
    """Read the site's data as the ClientApp will: a scenario site by name, else the hospital folder."""
    from common.scenario import load_hospital_site, load_scenario, load_site

    scenario = load_scenario(cfg.scenario)
    if cfg.name in [s.name for s in scenario.sites]:
        data = load_site(scenario, cfg.name, cfg.data_dir)
    elif cfg.data_dir is None:
        raise ValueError(
            f"site {cfg.name!r} is not a site of scenario {scenario.name!r}: set data-dir in {cfg.source.name} "
            "to the folder with labels.csv and the images (check it with `fedmeta data check DIR`)"
        )
    elif not cfg.data_dir.is_dir():
        raise FileNotFoundError(
            f"data-dir {cfg.data_dir} does not exist: set data-dir in {cfg.source.name} to the site's folder"
        )
    else:
        data = load_hospital_site(scenario, cfg.name, cfg.data_dir)
    classes = len(set(data.train.labels.tolist()))
    return f"{cfg.name} ({data.spec.role}): {len(data.train)} train / {len(data.test)} test examples, {classes} classes"


def supernode_argv(cfg: SiteConfig) -> list[str]:
    return [
        flower_command("flower-supernode"),
        "--superlink",
        cfg.coordinator,
        "--root-certificates",
        str(cfg.ca_cert),
        "--auth-supernode-private-key",
        str(cfg.auth_key),
        "--node-config",
        cfg.node_config(),
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.runtime_port),
    ]


def refusal(output: str, cfg: SiteConfig) -> tuple[str, bool] | None:
    """Why the coordinator turned this SuperNode away, from its output, and whether waiting may
    help; None if it did not turn it away.

    Flower answers "Failed to activate SuperNode" both to a key it does not know and to a node it
    still counts as online (a site restarted within its heartbeat window). From the site the two
    look the same, so an activation refusal is retried for `activation-wait` seconds first."""
    if any(marker in output for marker in NOT_REGISTERED):
        return (
            f"the coordinator did not activate this site: its key {cfg.auth_key} is not registered there (or was "
            f"revoked). Ask the consortium's ML lead to add site {cfg.name!r} (fedmeta provision add-site) "
            "and restart the coordinator",
            True,
        )
    if any(marker in output for marker in BAD_CERTIFICATE):
        return (
            f"the coordinator's certificate is not trusted by {cfg.ca_cert}: "
            "use the ca.pem from your consortium's bundle",
            False,
        )
    return None


def run_site(cfg: SiteConfig, echo: Callable[[str], None] = print, restarts: int = 0) -> None:
    """Check, wait for the coordinator, run the SuperNode; `restarts` 0 keeps restarting it forever."""
    result = check_site(cfg)
    if result.problems:
        raise ConfigError(f"{cfg.source}: this site is not ready:\n  " + "\n  ".join(result.problems))
    echo(f"site ready: {result.summary}; device {cfg.device}")
    env = child_env()
    env["FLWR_HOME"] = str(cfg.state_dir)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    attempt, delay, refused_since = 0, 2.0, None
    while True:
        wait_until(
            lambda: tls_check(cfg.host, cfg.port, cfg.ca_cert),
            cfg.max_wait,
            on_retry=lambda why, wait: echo(f"{why}; retrying in {wait:.0f} s"),
        )
        echo(f"connecting to {cfg.coordinator} as {cfg.name}")
        node = Child(supernode_argv(cfg), cfg.log_dir / "supernode.log", env=env, echo=echo)
        try:
            code = node.wait()
        finally:
            node.stop()
        refused = refusal(node.output(), cfg)
        if refused is not None:
            reason, may_pass = refused
            refused_since = refused_since or time.monotonic()
            waited = time.monotonic() - refused_since
            if not may_pass or waited >= cfg.activation_wait:
                raise SiteRefused(reason)
            pause = min(15.0, cfg.activation_wait - waited)
            echo(
                "the coordinator did not activate this site (an unknown key, or this site still counted online "
                f"from before a restart); retrying in {pause:.0f} s "
                f"for up to {cfg.activation_wait - waited:.0f} s more"
            )
            time.sleep(pause)
            continue
        refused_since = None
        attempt += 1
        if restarts and attempt >= restarts:
            raise RuntimeError(
                f"the SuperNode exited {attempt} times (last code {code}); see {cfg.log_dir / 'supernode.log'}"
            )
        echo(f"the SuperNode exited with code {code}; restarting in {delay:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 60.0)


__all__ = ["SiteRefused", "TLSRefused", "Unreachable", "check_site", "run_site"]
