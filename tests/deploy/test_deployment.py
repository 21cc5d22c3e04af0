"""A real deployment on loopback: `fedmeta provision`, then `fedmeta coordinator` (Flower SuperLink
with TLS and SuperNode authentication behind fedmeta's fleet gateway) and four `fedmeta site`
processes (Flower SuperNodes with TLS and their keys) run a 1-round federated meta-training on
synthetic site data. Two of the four are provisioned but hostile: site-2 says it is site-0, and
site-1 runs a modified ClientApp (tests/deploy/hostile) whose metrics break the rules. Outsiders
try on the way: a key the coordinator never registered, a SuperNode without TLS, one trusting
another CA, and requests crafted to reach the Control API or register a key through the public
port (path traversal, percent-encoding, absolute-form targets, other methods, HTTP/2, WebSocket).

Everything runs once per module (a few minutes on 2 cores); every process group is killed at
the end, also when something fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from flwr.cli.supernode.register import try_load_public_key
from flwr.proto.control_pb2 import RegisterNodeRequest
from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest

from deploy.processes import free_port
from deploy.provision import provision
from tests.deploy.bundle import set_keys
from tests.procs import BIN, Processes, group_gone, live_members, wait_for_port

pytestmark = pytest.mark.integration

SITES = ["site-0", "site-1", "heldout-0", "site-2"]  # names of the synthetic scenario's sites
HONEST, HOSTILE, IMPOSTOR = ["site-0", "heldout-0"], "site-1", "site-2"
RUN_TIMEOUT = 600
HOSTILE_CODE = Path(__file__).parent / "hostile"
# (method, request target) sent raw over TLS to the public port; none may reach anything but the
# Fleet API, every one must be refused and audited
ATTACKS = [
    ("POST", "/v1/control/list-nodes"),
    ("POST", "/v1/fleet/../control/list-nodes"),
    ("POST", "/v1/fleet/%2e%2e/control/list-nodes"),
    ("POST", "/v1/fleet/%2E%2E/control/list-nodes"),
    ("POST", "/v1/fleet/..%2fcontrol/list-nodes"),
    ("POST", "/v1/fleet/%252e%252e/control/list-nodes"),
    ("POST", "/v1/fleet/..%5ccontrol/list-nodes"),
    ("POST", "/v1/fleet/./../control/list-nodes"),
    ("POST", "//v1/control/list-nodes"),
    ("POST", "/v1/fleet//../../v1/control/list-nodes"),
    ("POST", "https://localhost/v1/control/list-nodes"),
    ("POST", "https://localhost/v1/fleet/../control/list-nodes"),
    ("POST", "/v1/fleet/../control/start-run"),
    ("POST", "/v1/fleet/../control/stop-run"),
    ("POST", "/v1/fleet/../runtime/get-nodes"),
    ("GET", "/v1/fleet/pull-messages"),
    ("POST", "/v1/fleet/pull-messages?next=/v1/control/list-nodes"),
    ("POST", "/v1/fleet/pull-messages/"),
    ("POST", "*"),
]


def raw_bytes(port: int, ca: Path, request: bytes) -> bytes:
    """Send `request` as is over TLS to localhost:port; the response's status line."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("localhost", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        response = b""
        while b"\r\n" not in response and (chunk := tls.recv(65536)):
            response += chunk
    return response.split(b"\r\n", 1)[0]


def raw_request(port: int, ca: Path, method: str, target: str, body: bytes = b"") -> int:
    """One HTTP/1.1 request whose target is sent byte for byte (no client-side normalisation)."""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/protobuf\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return int(raw_bytes(port, ca, head.encode("latin-1") + body).split()[1])


def registered_nodes(coordinator: Path) -> list[dict]:
    """The SuperLink's registered nodes, asked on loopback as the coordinator's operator would."""
    env = {**os.environ, "FLWR_HOME": str(coordinator / "state" / "flwr")}
    done = subprocess.run(
        [str(BIN / "flwr"), "supernode", "list", "fedmeta", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return json.loads(done.stdout)["nodes"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    logs = root / "logs"
    logs.mkdir()
    fleet, control = free_port(), free_port()
    provision(root / "consortium", ["localhost"], SITES, port=fleet)
    coordinator_toml = root / "consortium" / "coordinator" / "coordinator.toml"
    set_keys(
        coordinator_toml,
        control_port=control,
        min_sites=4,
        num_server_rounds=1,  # every message kind (query, train, evaluate, shots) in one round
        tasks_per_round=2,
        eval_every=1,
        eval_tasks=4,
        model_width=16,
        eval_shots="1",
    )
    for name in SITES:
        set_keys(root / "consortium" / "sites" / name / "site.toml", runtime_port=free_port(), device="cpu")
    set_keys(root / "consortium" / "sites" / IMPOSTOR / "site.toml", name="site-0")  # its own key, another's name
    # an outsider with its own consortium: a valid-looking key the coordinator never registered, another CA
    provision(root / "outsider", ["localhost"], ["site-2"], port=fleet)
    outsider = root / "outsider" / "sites" / "site-2"
    set_keys(outsider / "site.toml", runtime_port=free_port(), device="cpu", max_wait=60, activation_wait=5)

    procs = Processes(logs)
    result: dict[str, object] = {"root": root, "fleet": fleet, "control": control, "procs": procs}
    try:
        coordinator = procs.start(
            "coordinator",
            [str(BIN / "fedmeta"), "coordinator", "--config", str(coordinator_toml), "--run", "--exit-after-run"],
        )
        result["coordinator"] = coordinator
        wait_for_port(coordinator, fleet, root / "consortium" / "ca" / "ca.pem")

        # intruders, started before the real sites: the run must still start with exactly the three of them
        unregistered = root / "unregistered.toml"
        unregistered.write_text(
            (outsider / "site.toml")
            .read_text()
            .replace('ca-cert = "ca.pem"', f'ca-cert = "{root / "consortium" / "ca" / "ca.pem"}"')
        )
        set_keys(
            unregistered,
            auth_key=str(outsider / "auth.key"),
            runtime_port=free_port(),
            log_dir=str(root / "unregistered-logs"),
            state_dir=str(root / "unregistered-state"),
        )
        # all at once (each waits on its own refusal); the raw requests below go in meanwhile
        supernode = str(BIN / "flower-supernode")
        site0 = root / "consortium" / "sites" / "site-0"
        raw = [supernode, "--superlink", f"localhost:{fleet}", "--max-retries", "1"]
        intruders = {
            "unregistered": procs.start("unregistered", [str(BIN / "fedmeta"), "site", "--config", str(unregistered)]),
            "wrong_ca": procs.start(
                "wrong-ca", [str(BIN / "fedmeta"), "site", "--config", str(outsider / "site.toml")]
            ),
            "raw_wrong_ca": procs.start(
                "raw-wrong-ca",
                [
                    *raw,
                    "--root-certificates",
                    str(outsider / "ca.pem"),
                    "--auth-supernode-private-key",
                    str(site0 / "auth.key"),
                    "--port",
                    str(free_port()),
                ],
            ),
            "raw_no_tls": procs.start("raw-no-tls", [*raw, "--insecure", "--port", str(free_port())]),
        }
        ca = root / "consortium" / "ca" / "ca.pem"
        result["attacks"] = {(method, target): raw_request(fleet, ca, method, target) for method, target in ATTACKS}
        outsider_key = try_load_public_key(outsider / "auth.pub")
        register = RegisterNodeRequest(public_key=outsider_key, name="intruder").SerializeToString()
        self_register = RegisterNodeFleetRequest(public_key=outsider_key).SerializeToString()
        result["register"] = {
            target: raw_request(fleet, ca, "POST", target, body)
            for target, body in (
                ("/v1/fleet/../control/register-node", register),
                ("/v1/fleet/%2e%2e/control/register-node", register),
                ("/v1/fleet/register-node", self_register),
            )
        }
        result["nodes"] = registered_nodes(root / "consortium" / "coordinator")
        result["h2"] = raw_bytes(fleet, ca, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        result["websocket"] = raw_bytes(
            fleet,
            ca,
            b"GET /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        )

        hostile = {"PYTHONPATH": str(HOSTILE_CODE), "FEDMETA_HOSTILE_STATE": str(root / "hostile-state")}
        sites = [
            procs.start(
                name,
                [str(BIN / "fedmeta"), "site", "--config", str(root / "consortium" / "sites" / name / "site.toml")],
                env=hostile if name == HOSTILE else None,
            )
            for name in SITES
        ]
        # the sites join while the intruders are still trying (a refused SuperNode takes half a minute to exit)
        result.update({key: procs.finish(process) for key, process in intruders.items()})
        result["sites"] = sites
        try:
            result["coordinator_code"] = coordinator.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            result["coordinator_code"] = None
        # a site stops cleanly on SIGTERM (what systemd and docker send), its SuperNode with it
        for site in sites:
            os.killpg(site.pid, signal.SIGTERM) if site.poll() is None else None
        result["site_codes"] = [site.wait(30) for site in sites]
        result["left_running"] = [(p.args[:3], live_members(p.pid)) for p in procs.started if not group_gone(p.pid)]
        yield result
    finally:
        procs.kill_all()


def _log(result, name: str) -> str:
    return (result["root"] / "logs" / f"{name}.log").read_text()


def test_the_federated_run_completes_and_writes_results(deployment):
    assert deployment["coordinator_code"] == 0, _log(deployment, "coordinator")[-5000:]
    out = deployment["root"] / "consortium" / "coordinator" / "results"
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1]
    assert sorted(s["name"] for s in results["sites"]) == sorted([*HONEST, HOSTILE])  # the outsiders never joined
    assert results["rounds"][-1]["summary"]["heldout"]["acc-after"][0] >= 0
    assert (out / "model").is_dir() and (out / "metrics.csv").is_file()


def test_an_unregistered_key_is_refused(deployment):
    code, output = deployment["unregistered"]
    assert code == 3, output
    assert "did not activate this site" in output and "not registered" in output
    superlink = (deployment["root"] / "consortium" / "coordinator" / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink


def test_a_supernode_trusting_another_ca_fails(deployment):
    code, output = deployment["wrong_ca"]  # fedmeta site: refused before Flower starts
    assert code == 3, output
    assert "does not trust" in output
    code, output = deployment["raw_wrong_ca"]  # Flower's own SuperNode, same refusal
    assert code not in (0, None), output
    assert "CERTIFICATE_VERIFY_FAILED" in output


def test_a_supernode_without_tls_fails(deployment):
    code, output = deployment["raw_no_tls"]
    assert code not in (0, None), output
    assert "could not establish a connection" in output


def _audit(deployment) -> list[dict]:
    audit = deployment["root"] / "consortium" / "coordinator" / "logs" / "fleet-audit.jsonl"
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_the_public_port_serves_only_the_fleet_api(deployment):
    """Every crafted request is refused with 403 and audited with what it resolves to."""
    assert deployment["attacks"] == dict.fromkeys(ATTACKS, 403)
    refused = [e for e in _audit(deployment) if "refused" in e]
    for method, target in ATTACKS:
        path = target.removeprefix("https://localhost")
        assert any(e["refused"] == path and e["method"] == method for e in refused), (method, target)
    traversal = next(e for e in refused if e["refused"] == "/v1/fleet/%252e%252e/control/list-nodes")
    assert traversal["normalized"] == "/v1/control/list-nodes"  # the audit says what it was aimed at
    assert b" 400 " in deployment["h2"] + b" "  # no HTTP/2 on this port: no `:path` to smuggle
    assert deployment["websocket"].split()[1] == b"403"


def test_an_unprovisioned_key_cannot_register_through_the_public_port(deployment):
    assert deployment["register"] == {
        "/v1/fleet/../control/register-node": 403,
        "/v1/fleet/%2e%2e/control/register-node": 403,
        "/v1/fleet/register-node": 403,
    }
    registry = json.loads((deployment["root"] / "consortium" / "coordinator" / "state" / "registered.json").read_text())
    assert sorted(int(n["node-id"]) for n in deployment["nodes"]) == sorted(e["node_id"] for e in registry.values())
    assert sorted(registry) == sorted(SITES)


def test_a_site_claiming_another_sites_name_is_rejected_and_the_run_completes(deployment):
    results = json.loads((deployment["root"] / "consortium" / "coordinator" / "results" / "results.json").read_text())
    assert sorted(s["name"] for s in results["sites"]) == sorted([*HONEST, HOSTILE])
    assert list(results["rejected_sites"]) == [IMPOSTOR]
    assert "claims to be site 'site-0', but its key is registered as 'site-2'" in results["rejected_sites"][IMPOSTOR]
    site0 = next(s for s in results["sites"] if s["name"] == "site-0")
    registry = json.loads((deployment["root"] / "consortium" / "coordinator" / "state" / "registered.json").read_text())
    assert site0["node_id"] == registry["site-0"]["node_id"]  # site-0 is the node whose key is site-0's
    assert "site-2" in _log(deployment, "coordinator") and "is rejected and takes no part" in _log(
        deployment, "coordinator"
    )


def test_bad_metrics_are_rejected_by_name_and_the_run_completes(deployment):
    results = json.loads((deployment["root"] / "consortium" / "coordinator" / "results" / "results.json").read_text())
    for row in results["rounds"]:
        assert "'meta-loss' is a list of 2" in row["train_errors"][HOSTILE]
        assert list(row["train"]) == ["site-0"]
    last = results["rounds"][-1]
    assert "missing key(s) ['acc-after-ci']" in last["evaluate_errors"][HOSTILE]
    assert sorted(last["evaluate"]) == sorted(HONEST)
    assert "'acc-after' is nan" in results["shots"]["1"]["evaluate_errors"][HOSTILE]
    assert sorted(results["shots"]["1"]["evaluate"]) == sorted(HONEST)


def test_only_meta_gradients_and_scalar_metrics_leave_the_sites(deployment):
    from common.algorithms import build_algorithm
    from common.backbones import build_model
    from common.runconfig import parse_run_config
    from common.scenario import load_scenario
    from deploy.config import load_coordinator_config
    from deploy.coordinator import app_run_config

    cfg = parse_run_config(
        app_run_config(load_coordinator_config(deployment["root"] / "consortium" / "coordinator" / "coordinator.toml"))
    )
    scenario = load_scenario(cfg.data.scenario)
    params = build_algorithm(build_model(scenario.model_config(cfg.model)), cfg.meta).init_meta_params()
    param_shapes = {tuple(p.shape) for p in params.values()}
    image_shape = (scenario.channels, scenario.image_size, scenario.image_size)

    audit = deployment["root"] / "consortium" / "coordinator" / "logs" / "fleet-audit.jsonl"
    pushed = [e for e in map(json.loads, audit.read_text().splitlines()) if "type" in e]
    assert pushed, "the audit saw nothing"
    assert {e["type"] for e in pushed} <= {
        "Message",
        "RecordDict",
        "ArrayRecord",
        "Array",
        "ArrayChunk",
        "MetricRecord",
        "ConfigRecord",
    }
    arrays = [tuple(e["shape"]) for e in pushed if e["type"] == "Array"]
    assert arrays and set(arrays) <= param_shapes
    assert not any(shape[-2:] == image_shape[-2:] or shape == image_shape for shape in arrays)
    registry = json.loads((deployment["root"] / "consortium" / "coordinator" / "state" / "registered.json").read_text())
    for entry in pushed:
        if entry["type"] == "MetricRecord" and entry["node_id"] != registry[HOSTILE]["node_id"]:  # the honest code's
            assert set(entry["keys"].values()) <= {"int", "float"}, (
                entry
            )  # scalars only, no lists of per-example values
        if entry["type"] == "ConfigRecord":
            assert set(entry["keys"]) <= {"site-name", "role", "num-train", "num-test", "device"}, entry
    nodes = {e["node_id"] for e in pushed}
    assert len(nodes) == len(SITES)


def test_every_process_is_stopped(deployment):
    assert deployment["site_codes"] == [0] * len(SITES), [_log(deployment, name)[-2000:] for name in SITES]
    assert deployment["left_running"] == []
