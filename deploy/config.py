"""`coordinator.toml` and `site.toml` into typed configs, once, at the edge.

Relative paths are relative to the TOML file, so a bundle can be moved as a whole. Every
problem is a `ConfigError` naming the file, the key and the fix.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from common.config import reject_unknown
from common.runconfig import parse_run_config


class ConfigError(ValueError):
    pass


def _load(path: Path, section: str) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such file; give the {section}.toml from your provisioning bundle (fedmeta provision new)"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    if section not in document:
        raise ConfigError(f"{path}: no [{section}] table; is this the {section}'s config?")
    return document[section], document


class _Reader:
    """Typed access to one TOML table, with errors that name the file and key."""

    def __init__(self, path: Path, table: dict, section: str):
        self.path, self.table, self.section = Path(path), dict(table), section
        self.asked: set[str] = set()  # every key read, for "did you mean" on the ones left

    def get(self, key: str, kind: type, default: object = None):
        self.asked.add(key)
        if key not in self.table:
            if default is None:
                raise ConfigError(f"{self.path}: [{self.section}] needs {key} = ...")
            return default
        value = self.table.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{self.path}: [{self.section}] {key} = {value!r} should be a {kind.__name__}")
        return value

    def path_of(self, key: str, default: str | None = None) -> Path:
        return self.resolve(self.get(key, str, default))

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def port(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if not 0 < value < 65536:
            raise ConfigError(f"{self.path}: [{self.section}] {key} = {value} is not a TCP port (1-65535)")
        return value

    def done(self) -> None:
        try:
            reject_unknown(f"{self.path}: [{self.section}]", self.table, self.asked)
        except ValueError as error:
            raise ConfigError(str(error)) from None


@dataclass(frozen=True)
class CoordinatorConfig:
    source: Path
    hosts: tuple[str, ...]
    fleet_port: int  # public: the sites' SuperNodes connect here (fedmeta's fleet gateway)
    control_port: int  # the SuperLink itself, on loopback only: flwr CLI and the ServerApp
    bind: str  # the gateway's listen address
    ca_cert: Path
    server_cert: Path
    server_key: Path
    authorized_sites: Path
    state_dir: Path
    log_dir: Path
    audit: bool
    run_config: dict[str, object] = field(default_factory=dict)

    @property
    def superlink_address(self) -> str:
        return f"127.0.0.1:{self.control_port}"


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    table, document = _load(path, "coordinator")
    r = _Reader(path, table, "coordinator")
    hosts = r.get("hosts", list)
    if not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(
            f'{path}: [coordinator] hosts must list the names/IPs sites dial, e.g. ["coordinator.example.org"]'
        )
    cfg = CoordinatorConfig(
        source=Path(path).resolve(),
        hosts=tuple(hosts),
        fleet_port=r.port("fleet-port", 9092),
        control_port=r.port("control-port", 9093),
        bind=r.get("bind", str, "0.0.0.0"),
        ca_cert=r.path_of("ca-cert", "ca.pem"),
        server_cert=r.path_of("server-cert", "server.pem"),
        server_key=r.path_of("server-key", "server.key"),
        authorized_sites=r.path_of("authorized-sites", "authorized-sites.csv"),
        state_dir=r.path_of("state-dir", "state"),
        log_dir=r.path_of("log-dir", "logs"),
        audit=r.get("audit", bool, True),
        run_config=dict(document.get("run-config", {})),
    )
    r.done()
    if cfg.fleet_port == cfg.control_port:
        raise ConfigError(f"{path}: fleet-port and control-port are both {cfg.fleet_port}; they must differ")
    try:
        parse_run_config(cfg.run_config)
    except ValueError as error:
        raise ConfigError(f"{path}: [run-config]: {error}") from error
    # the ServerApp runs in another working directory: hand it an absolute path
    cfg.run_config["out-dir"] = str(r.resolve(str(cfg.run_config.get("out-dir") or "results")))
    return cfg


@dataclass(frozen=True)
class SiteConfig:
    source: Path
    name: str
    coordinator: str  # host:port of the coordinator's fleet port
    ca_cert: Path
    auth_key: Path
    data_dir: Path | None  # the hospital's folder, or MedMNIST files of a scenario site
    scenario: str  # the run's scenario this site expects (its image size and channels)
    device: str
    kernels: str  # this machine's CPU kernels: auto | native | torch (common.native.resolve_kernels)
    runtime_port: int  # the SuperNode's local ClientApp API, loopback only
    state_dir: Path  # the SuperNode's Flower home
    log_dir: Path
    max_wait: float  # seconds to keep retrying an unreachable coordinator (0: forever)
    activation_wait: float  # seconds to retry a refused activation (a restart inside the heartbeat window)

    @property
    def host(self) -> str:
        return self.coordinator.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])

    def node_config(self) -> str:
        """`--node-config` for flower-supernode: what the ClientApp reads from `context.node_config`."""
        parts = [f'site-name="{self.name}"', f'device="{self.device}"', f'kernels="{self.kernels}"']
        if self.data_dir is not None:
            parts.append(f'data-dir="{self.data_dir}"')
        return " ".join(parts)


def load_site_config(path: Path) -> SiteConfig:
    table, _ = _load(path, "site")
    r = _Reader(path, table, "site")
    coordinator = r.get("coordinator", str)
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f'{path}: [site] coordinator = {coordinator!r} should be host:port, e.g. "coordinator.example.org:9092"'
        )
    data_dir = r.get("data-dir", str, "")
    cfg = SiteConfig(
        source=Path(path).resolve(),
        name=r.get("name", str),
        coordinator=coordinator,
        ca_cert=r.path_of("ca-cert", "ca.pem"),
        auth_key=r.path_of("auth-key", "auth.key"),
        data_dir=r.resolve(data_dir) if data_dir else None,
        scenario=r.get("scenario", str, "synthetic"),
        device=r.get("device", str, "auto"),
        kernels=r.get("kernels", str, "auto"),
        runtime_port=r.port("runtime-port", 9094),
        state_dir=r.path_of("state-dir", "state"),
        log_dir=r.path_of("log-dir", "logs"),
        max_wait=r.get("max-wait", float, 0.0),
        activation_wait=r.get("activation-wait", float, 120.0),
    )
    r.done()
    from common.native import KERNELS

    if cfg.kernels not in KERNELS:
        raise ConfigError(f"{path}: [site] kernels = {cfg.kernels!r}: choose one of {', '.join(KERNELS)}")
    if '"' in cfg.name or (cfg.data_dir is not None and '"' in str(cfg.data_dir)):
        raise ConfigError(f"{path}: [site] name and data-dir may not contain '\"'")
    return cfg
