"""`fedmeta provision`: one bundle per party, each holding only what that party needs.

    OUT/
      ca/ca.key, ca/ca.pem           the consortium CA: keep ca.key offline (0600)
      coordinator/                   to the coordinator's host
        ca.pem server.pem server.key authorized-sites.csv coordinator.toml
      sites/<name>/                  to each hospital, over a channel you trust
        ca.pem auth.key auth.pub site.toml

Private keys are created 0600. A bundle that exists is never overwritten unless `force`.
Adding a site later signs nothing (site keys are not certificates): it makes the site's key
pair and appends its public key to the coordinator's list; revoking removes it from the list.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from deploy.pki import create_ca, issue_server_cert, pem_cert, pem_key, site_auth_keypair, write_public, write_secret

FLEET_PORT = 9092  # SuperNodes connect here (open it to the sites)
CONTROL_PORT = 9093  # flwr CLI (keep it to the coordinator's operators)
# Flower's own clients on the coordinator (flwr CLI, SuperExec) reach the SuperLink on loopback
# and check the certificate's name there too
LOOPBACK = ("127.0.0.1", "localhost")
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
AUTHORIZED = "authorized-sites.csv"


class BundleExists(FileExistsError):
    pass


def _check_name(name: str) -> None:
    if not SITE_NAME.match(name):
        raise ValueError(
            f"site name {name!r}: use lower-case letters, digits and '-', starting with a letter or digit (at most 63)"
        )


def provision(out: Path, hosts: list[str], sites: list[str], force: bool = False, port: int = FLEET_PORT) -> dict:
    """Create the CA, the coordinator bundle and one bundle per site; returns the manifest."""
    out = Path(out)
    if not hosts:
        raise ValueError("give at least one host name or IP address the sites will connect to (--host)")
    for name in sites:
        _check_name(name)
    if len(set(sites)) != len(sites):
        raise ValueError(f"site names must be unique: {sites}")
    existing = [p for p in (out / "ca", out / "coordinator", *(out / "sites" / s for s in sites)) if p.exists()]
    if existing and not force:
        raise BundleExists(
            f"{', '.join(map(str, existing))} already exist: provisioning again would replace the consortium's "
            "keys; use `fedmeta provision add-site` to add a site, or --force to start over"
        )
    for path in existing:
        shutil.rmtree(path)
    ca_key, ca_cert = create_ca()
    server_key, server_cert = issue_server_cert(ca_key, ca_cert, [*hosts, *(h for h in LOOPBACK if h not in hosts)])
    write_secret(out / "ca" / "ca.key", pem_key(ca_key))
    write_public(out / "ca" / "ca.pem", pem_cert(ca_cert))
    coordinator = out / "coordinator"
    write_public(coordinator / "ca.pem", pem_cert(ca_cert))
    write_public(coordinator / "server.pem", pem_cert(server_cert))
    write_secret(coordinator / "server.key", pem_key(server_key))
    (coordinator / AUTHORIZED).write_text("name,public_key\n")
    (coordinator / "coordinator.toml").write_text(_coordinator_toml(hosts, port))
    manifest = {"hosts": hosts, "port": port, "sites": []}
    _write_manifest(out, manifest)
    for name in sites:
        add_site(out, name)
    return json.loads((out / "provision.json").read_text())


def add_site(out: Path, name: str) -> Path:
    """A new site's bundle, and its public key on the coordinator's list."""
    _check_name(name)
    out = Path(out)
    manifest = json.loads((out / "provision.json").read_text())
    bundle = out / "sites" / name
    if name in manifest["sites"] or bundle.exists():
        raise BundleExists(f"site {name!r} is already provisioned ({bundle}); revoke it first to issue new keys")
    private, public = site_auth_keypair()
    write_public(bundle / "ca.pem", (out / "ca" / "ca.pem").read_bytes())
    write_secret(bundle / "auth.key", private)
    write_public(bundle / "auth.pub", public)
    (bundle / "site.toml").write_text(_site_toml(name, manifest["hosts"][0], manifest["port"]))
    with open(out / "coordinator" / AUTHORIZED, "a", newline="") as handle:
        csv.writer(handle).writerow([name, public.decode().strip()])
    manifest["sites"].append(name)
    _write_manifest(out, manifest)
    return bundle


def revoke_site(out: Path, name: str) -> None:
    """Take a site off the coordinator's list (its bundle is kept, marked revoked)."""
    out = Path(out)
    manifest = json.loads((out / "provision.json").read_text())
    if name not in manifest["sites"]:
        raise ValueError(f"site {name!r} is not provisioned here; provisioned: {manifest['sites']}")
    rows = [row for row in authorized_sites(out / "coordinator") if row[0] != name]
    with open(out / "coordinator" / AUTHORIZED, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "public_key"])
        writer.writerows(rows)
    bundle = out / "sites" / name
    if bundle.exists():
        bundle.rename(bundle.with_name(f"{name}.revoked"))
    manifest["sites"].remove(name)
    manifest.setdefault("revoked", []).append(name)
    _write_manifest(out, manifest)


def authorized_sites(path: Path) -> list[tuple[str, str]]:
    """(name, OpenSSH public key) rows of a coordinator's list (the CSV, or the bundle holding it)."""
    path = Path(path)
    with open(path / AUTHORIZED if path.is_dir() else path, newline="") as handle:
        return [(row["name"], row["public_key"]) for row in csv.DictReader(handle)]


def load_ca(out: Path) -> tuple[object, x509.Certificate]:
    out = Path(out)
    key = load_pem_private_key((out / "ca" / "ca.key").read_bytes(), password=None)
    return key, x509.load_pem_x509_certificate((out / "ca" / "ca.pem").read_bytes())


def _write_manifest(out: Path, manifest: dict) -> None:
    (out / "provision.json").write_text(json.dumps(manifest, indent=1))


def _coordinator_toml(hosts: list[str], port: int) -> str:
    return f"""# fedmeta coordinator: `fedmeta coordinator --config coordinator.toml`
[coordinator]
hosts = {json.dumps(hosts)}   # names/IPs in server.pem; sites dial one of them
fleet-port = {port}           # the sites' SuperNodes connect here: open it to the sites
control-port = {CONTROL_PORT}         # the SuperLink itself, bound to 127.0.0.1 (flwr CLI, ServerApp)
ca-cert = "ca.pem"
server-cert = "server.pem"
server-key = "server.key"
authorized-sites = "{AUTHORIZED}"
bind = "0.0.0.0"              # the fleet port's listen address
state-dir = "state"          # SuperLink's database (runs survive restarts), site registrations
log-dir = "logs"             # superlink.log, gateway.log, run logs
audit = true                 # logs/fleet-audit.jsonl: type and shape of everything sites send (never values)

[run-config]                 # any key of fedmeta's run config
scenario = "synthetic"
num-server-rounds = 50
out-dir = "results"
min-sites = 1                # wait for this many sites before the first round
"""


def _site_toml(name: str, host: str, port: int) -> str:
    return f"""# fedmeta site: `fedmeta site --config site.toml`
[site]
name = "{name}"
coordinator = "{host}:{port}"
ca-cert = "ca.pem"           # trust only the consortium's CA
auth-key = "auth.key"        # this site's SuperNode key (0600, never leaves the site)
data-dir = ""                # fill in: the folder with labels.csv and the images
scenario = "synthetic"       # the consortium's scenario: fixes image size and channels
device = "auto"              # auto | cpu | cuda | cuda:N
kernels = "auto"             # CPU only: auto | native (fedmeta's fused C kernels, needs a C compiler) | torch
runtime-port = 9094          # the SuperNode's local ClientApp port (loopback; change if taken)
log-dir = "logs"
max-wait = 0                 # seconds to retry an unreachable coordinator before giving up (0: forever)
activation-wait = 120        # seconds to retry when the coordinator will not activate this site yet (after a restart)
"""
