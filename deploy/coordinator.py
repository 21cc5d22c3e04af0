"""`fedmeta coordinator`: Flower's SuperLink with TLS and SuperNode authentication, the fleet
gateway in front of it, the provisioned sites registered, and (on request) the training run.

    sites --TLS--> gateway (fleet-port, public) --TLS--> SuperLink (127.0.0.1:control-port)
                                                          ^-- flwr CLI, ServerApp (loopback)

Site registrations follow `authorized-sites.csv` on every start: new keys are registered,
revoked ones unregistered. They are remembered in `state-dir/registered.json` (Flower keeps
no names), next to the SuperLink's database `state-dir/superlink.db`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_ssh_public_key,
)

from common.runconfig import flat_run_config, parse_run_config
from deploy.config import ConfigError, CoordinatorConfig
from deploy.gateway import Audit, GatewayServer, create_gateway
from deploy.processes import Child, Unreachable, child_env, flower_command, tls_check, wait_until
from deploy.provision import LOOPBACK, authorized_sites

FEDERATION = "fedmeta"  # the flwr CLI's name for this coordinator's SuperLink
RUN_STARTED = re.compile(r"Successfully started run (\d+)")  # what `flwr run` prints
AUDIT_LOG = "fleet-audit.jsonl"


def _spki(key: PublicKeyTypes) -> bytes:
    """A public key as SubjectPublicKeyInfo (DER): two keys are the same exactly when these bytes are."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def check_coordinator(cfg: CoordinatorConfig) -> list[str]:
    """Everything that would make the SuperLink, a site connection or the run's start fail, before
    starting anything."""
    problems: list[str] = []
    try:  # the run's settings and its scenario, as the ServerApp will read them
        app_run_config(cfg)
    except (ValueError, FileNotFoundError) as error:
        problems.append(f"[run-config] in {cfg.source}: {error}")
    missing = [
        f"{what} {path}: no such file (it comes with the coordinator bundle from `fedmeta provision new`)"
        for path, what in (
            (cfg.ca_cert, "ca-cert"),
            (cfg.server_cert, "server-cert"),
            (cfg.server_key, "server-key"),
            (cfg.authorized_sites, "authorized-sites"),
        )
        if not path.is_file()
    ]
    if missing:  # nothing further can be read
        return problems + missing
    if stat.S_IMODE(cfg.server_key.stat().st_mode) & 0o077:
        problems.append(f"server-key {cfg.server_key}: readable by others; run `chmod 600 {cfg.server_key}`")
    try:
        ca = x509.load_pem_x509_certificate(cfg.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(cfg.server_cert.read_bytes())
        key = load_pem_private_key(cfg.server_key.read_bytes(), password=None)
    except ValueError as error:
        return [*problems, f"the certificate or key files are not PEM ({error}); use the files from your bundle"]
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 -- any failure means: not this CA's certificate
        problems.append(
            f"server-cert {cfg.server_cert} is not signed by ca-cert {cfg.ca_cert}: "
            "both must come from the same provisioning"
        )
    if _spki(cert.public_key()) != _spki(key.public_key()):
        problems.append(f"server-key {cfg.server_key} does not belong to server-cert {cfg.server_cert}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(
            f"server-cert {cfg.server_cert} is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: issue a new one (fedmeta provision)"
        )
    names = _cert_names(cert)
    missing = [h for h in (*cfg.hosts, LOOPBACK[0]) if h not in names]
    if missing:
        problems.append(
            f"server-cert {cfg.server_cert} is not valid for {missing} (it names {sorted(names)}): "
            "provision again with those --host values"
        )
    try:
        for _, public_key in authorized_sites(cfg.authorized_sites):
            load_ssh_public_key(public_key.encode())
    except (ValueError, KeyError, OSError) as error:
        problems.append(f"authorized-sites {cfg.authorized_sites}: a row does not hold an OpenSSH public key ({error})")
    return problems


def _cert_names(cert: x509.Certificate) -> set[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))}


def app_run_config(cfg: CoordinatorConfig, **overrides: object) -> dict[str, object]:
    """Every run-config key: the defaults, the scenario's recommendations, coordinator.toml's [run-config],
    `overrides`."""
    from common.scenario import load_scenario

    scenario = str(cfg.run_config.get("scenario", "synthetic"))
    sc = load_scenario(scenario, str(cfg.run_config.get("tasks", "scenario")))  # the run's kind of task, checked
    values = {
        **sc.run_config,
        "ways": sc.episode.ways,
        "shots": sc.episode.shots,
        "queries": sc.episode.queries,
        **cfg.run_config,
        **overrides,
    }
    return flat_run_config(parse_run_config(values))


def check_run_start(cfg: CoordinatorConfig, resume: bool, force_resume: bool) -> None:
    """What the ServerApp would refuse about out-dir's checkpoint, found before any process
    starts: an earlier run's checkpoint without --resume, an unreadable one, changed settings
    without --force-resume, another model even with it. Raises with the file and the fix."""
    from server.app import meta_template
    from server.checkpoint import CHECKPOINT, prepare_resume

    run_config = app_run_config(cfg, **{"resume": resume, "force-resume": force_resume})
    parsed = parse_run_config(run_config)
    prepare_resume(
        Path(parsed.train.out_dir) / CHECKPOINT,
        run_config,
        resume,
        force_resume,
        template=meta_template(parsed) if resume else None,
    )


@dataclass
class Coordinator:
    cfg: CoordinatorConfig
    echo: Callable[[str], None] = print
    superlink: Child | None = None
    gateway: GatewayServer | None = None
    run: Child | None = None
    run_id: int | None = None  # Flower's id of the run `start_run` started, once it has said so

    @property
    def flwr_home(self) -> Path:
        return self.cfg.state_dir / "flwr"

    @property
    def registry_path(self) -> Path:
        return self.cfg.state_dir / "registered.json"

    def start(self, wait: float = 60.0) -> None:
        """SuperLink, site registrations, gateway; raises (after stopping what started) on failure."""
        problems = check_coordinator(self.cfg)
        if problems:
            raise ConfigError(f"{self.cfg.source}:\n  " + "\n  ".join(problems))
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_cli_config()
        try:
            self._start_superlink(wait)
            self.sync_sites()
            audit = Audit(self.cfg.log_dir / AUDIT_LOG) if self.cfg.audit else None
            app = create_gateway(self.cfg.superlink_address, self.cfg.ca_cert, audit)
            self.gateway = GatewayServer(
                app,
                self.cfg.bind,
                self.cfg.fleet_port,
                self.cfg.server_cert,
                self.cfg.server_key,
                self.cfg.log_dir / "gateway.log",
            )
            self.gateway.start()
        except BaseException:
            self.stop()
            raise
        self.echo(
            f"sites connect to {self.cfg.hosts[0]}:{self.cfg.fleet_port} (open this port to them); "
            f"SuperLink on {self.cfg.superlink_address} (loopback only)"
        )

    def _start_superlink(self, wait: float) -> None:
        argv = [
            flower_command("flower-superlink"),
            "--ssl-certfile",
            str(self.cfg.server_cert),
            "--ssl-keyfile",
            str(self.cfg.server_key),
            "--ssl-ca-certfile",
            str(self.cfg.ca_cert),
            "--enable-supernode-auth",
            "--database",
            str(self.cfg.state_dir / "superlink.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.cfg.control_port),
            "--log-file",
            str(self.cfg.log_dir / "superlink.log"),
            # the app's code is fedmeta's, installed here: never install what a run asks for
            "--disable-runtime-dependency-installation",
        ]
        superlink = self.superlink = Child(argv, self.cfg.log_dir / "superlink.out", env=self._env())

        def up() -> None:
            if not superlink.running():
                raise RuntimeError(
                    f"flower-superlink exited with code {superlink.process.returncode}:\n{superlink.output()[-3000:]}"
                )
            tls_check("127.0.0.1", self.cfg.control_port, self.cfg.ca_cert)

        try:
            wait_until(up, max_wait=wait, first_delay=0.2, max_delay=2.0)
        except Unreachable as error:
            raise RuntimeError(
                f"the SuperLink did not come up on {self.cfg.superlink_address}: {error}; "
                f"see {self.cfg.log_dir / 'superlink.out'}"
            ) from error

    def _env(self) -> dict[str, str]:
        env = child_env()
        env["FLWR_HOME"] = str(self.flwr_home)
        return env

    def _write_cli_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
            f'address = "{self.cfg.superlink_address}"\nroot-certificates = "{self.cfg.ca_cert}"\n'
        )

    def flwr(self, *args: str) -> dict:
        """One `flwr` CLI call against this SuperLink, JSON out."""
        argv = [flower_command("flwr"), *args, FEDERATION, "--format", "json"]
        done = subprocess.run(argv, capture_output=True, text=True, env=self._env(), timeout=120)
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {"success": False, "error-message": (done.stdout + done.stderr).strip()}

    def sync_sites(self) -> dict[str, dict]:
        """Register every key in authorized-sites.csv, unregister the ones no longer there."""
        wanted = dict(authorized_sites(self.cfg.authorized_sites))
        registry: dict[str, dict] = json.loads(self.registry_path.read_text()) if self.registry_path.exists() else {}
        for name, entry in sorted(registry.items()):
            if wanted.get(name) != entry["public_key"]:
                if entry.get("node_id") is not None:
                    reply = self.flwr("supernode", "unregister", str(entry["node_id"]))
                    if not reply.get("success"):
                        raise RuntimeError(
                            f"could not unregister revoked site {name} (node {entry['node_id']}): "
                            f"{reply.get('error-message')}"
                        )
                self.echo(f"site {name}: unregistered (no longer in {self.cfg.authorized_sites.name})")
                del registry[name]
                self._save_registry(registry)
        keys_dir = self.cfg.state_dir / "keys"
        keys_dir.mkdir(exist_ok=True)
        for name, public_key in sorted(wanted.items()):
            if name in registry:
                continue
            key_file = keys_dir / f"{name}.pub"
            key_file.write_text(public_key + "\n")
            reply = self.flwr("supernode", "register", str(key_file), "--name", name)
            if reply.get("success"):
                node_id = int(reply["node-id"])
            elif "already in use" in str(reply.get("error-message", "")):
                node_id = None  # registered in the database by an earlier start whose registry was lost
            else:
                raise RuntimeError(f"could not register site {name}: {reply.get('error-message')}")
            registry[name] = {"public_key": public_key, "node_id": node_id}
            self._save_registry(registry)
            self.echo(
                f"site {name}: registered" + (f" (node {node_id})" if node_id is not None else " (already known)")
            )
        return registry

    def _save_registry(self, registry: dict) -> None:
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=1))
        os.replace(tmp, self.registry_path)

    def run_command(self, resume: bool = False, force_resume: bool = False) -> list[str]:
        """The `flwr run` that starts (or resumes from its checkpoint) federated meta-training here."""
        from server.appdir import write_app_dir

        app_dir = self.cfg.state_dir / "app"
        app_dir.mkdir(parents=True, exist_ok=True)
        write_app_dir(app_dir, app_run_config(self.cfg, **{"resume": resume, "force-resume": force_resume}))
        return [flower_command("flwr"), "run", str(app_dir), FEDERATION, "--stream"]

    def start_run(
        self, echo: Callable[[str], None] | None = None, resume: bool = False, force_resume: bool = False
    ) -> Child:
        self.run_id = None

        def watch(line: str) -> None:
            if (started := RUN_STARTED.search(line)) is not None:
                self.run_id = int(started.group(1))
            if echo is not None:
                echo(line)

        self.run = Child(
            self.run_command(resume, force_resume), self.cfg.log_dir / "run.log", env=self._env(), echo=watch
        )
        return self.run

    def run_status(self, wait: float = 30.0) -> tuple[str, str]:
        """(Flower's status of the started run, its details) once the run has finished, e.g.
        ("finished:completed", "") or ("finished:failed", "...TimeoutError..."). `flwr run --stream`
        itself exits 0 either way, so this is what tells success from failure."""
        if self.run_id is None:
            return "not-started", f"`flwr run` did not start a run; see {self.cfg.log_dir / 'run.log'}"
        deadline = time.monotonic() + wait
        while True:
            runs = self.flwr("ls", "--run-id", str(self.run_id)).get("runs") or [{}]
            status, details = str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))
            if status.startswith("finished") or time.monotonic() > deadline:
                return status, details
            time.sleep(1.0)

    def stop(self) -> None:
        for child in (self.run, self.superlink):
            if child is not None:
                child.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.run = self.superlink = self.gateway = None
