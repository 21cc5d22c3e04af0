"""A real deployment on loopback: `fedmeta provision`, then `fedmeta coordinator` (Flower SuperLink
with TLS and SuperNode authentication behind fedmeta's fleet gateway) and three `fedmeta site`
processes (Flower SuperNodes with TLS and their keys) run a 2-round federated meta-training on
synthetic site data. Intruders try to join on the way: a key the coordinator never registered, a
SuperNode without TLS, one trusting another CA, and a Control API call through the public port.

Everything runs once per module (a few minutes on 2 cores); every process group is killed at
the end, also when something fails.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess

import httpx
import pytest

from deploy.processes import free_port
from deploy.provision import provision
from tests.deploy.bundle import set_keys
from tests.procs import BIN, Processes, group_gone, live_members, wait_for_port

pytestmark = pytest.mark.integration

SITES = ["site-0", "site-1", "heldout-0"]  # names of the synthetic scenario's sites
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    logs = root / "logs"
    logs.mkdir()
    fleet, control = free_port(), free_port()
    provision(root / "consortium", ["localhost"], SITES, port=fleet)
    coordinator_toml = root / "consortium" / "coordinator" / "coordinator.toml"
    set_keys(coordinator_toml, control_port=control, min_sites=3, num_server_rounds=2, tasks_per_round=2, eval_every=2,
             eval_tasks=4, model_width=16)
    for name in SITES:
        set_keys(root / "consortium" / "sites" / name / "site.toml", runtime_port=free_port(), device="cpu")
    # an outsider with its own consortium: a valid-looking key the coordinator never registered, another CA
    provision(root / "outsider", ["localhost"], ["site-2"], port=fleet)
    outsider = root / "outsider" / "sites" / "site-2"
    set_keys(outsider / "site.toml", runtime_port=free_port(), device="cpu", max_wait=60, activation_wait=5)

    procs = Processes(logs)
    result: dict[str, object] = {"root": root, "fleet": fleet, "control": control, "procs": procs}
    try:
        coordinator = procs.start("coordinator", [str(BIN / "fedmeta"), "coordinator", "--config", str(coordinator_toml),
                                                  "--run", "--exit-after-run"])
        result["coordinator"] = coordinator
        wait_for_port(coordinator, fleet, root / "consortium" / "ca" / "ca.pem")

        # intruders, before the real sites: the run must still start with exactly the three of them
        unregistered = root / "unregistered.toml"
        unregistered.write_text((outsider / "site.toml").read_text().replace('ca-cert = "ca.pem"',
                                f'ca-cert = "{root / "consortium" / "ca" / "ca.pem"}"'))
        set_keys(unregistered, auth_key=str(outsider / "auth.key"), log_dir=str(root / "unregistered-logs"),
                 state_dir=str(root / "unregistered-state"))
        result["unregistered"] = procs.run("unregistered", [str(BIN / "fedmeta"), "site", "--config", str(unregistered)])
        result["wrong_ca"] = procs.run("wrong-ca", [str(BIN / "fedmeta"), "site", "--config", str(outsider / "site.toml")])
        supernode = str(BIN / "flower-supernode")
        site0 = root / "consortium" / "sites" / "site-0"
        result["raw_wrong_ca"] = procs.run("raw-wrong-ca", [
            supernode, "--superlink", f"localhost:{fleet}", "--root-certificates", str(outsider / "ca.pem"),
            "--auth-supernode-private-key", str(site0 / "auth.key"), "--port", str(free_port()), "--max-retries", "1"])
        result["raw_no_tls"] = procs.run("raw-no-tls", [
            supernode, "--superlink", f"localhost:{fleet}", "--insecure", "--port", str(free_port()), "--max-retries", "1"])
        result["control_api"] = httpx.post(f"https://localhost:{fleet}/v1/control/list-nodes", verify=ssl.create_default_context(cafile=str(site0 / "ca.pem")),
                                           timeout=30).status_code

        sites = [procs.start(name, [str(BIN / "fedmeta"), "site", "--config", str(root / "consortium" / "sites" / name / "site.toml")])
                 for name in SITES]
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
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert sorted(s["name"] for s in results["sites"]) == sorted(SITES)  # the intruders never joined
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


def test_the_public_port_serves_only_the_fleet_api(deployment):
    assert deployment["control_api"] == 403
    audit = deployment["root"] / "consortium" / "coordinator" / "logs" / "fleet-audit.jsonl"
    assert any(json.loads(line).get("refused") == "/v1/control/list-nodes" for line in audit.read_text().splitlines())


def test_only_meta_gradients_and_scalar_metrics_leave_the_sites(deployment):
    from common.algorithms import build_algorithm
    from common.models import build_model
    from common.runconfig import parse_run_config
    from deploy.config import load_coordinator_config
    from deploy.coordinator import app_run_config
    from simulation.scenario import load_scenario

    cfg = parse_run_config(app_run_config(load_coordinator_config(
        deployment["root"] / "consortium" / "coordinator" / "coordinator.toml")))
    scenario = load_scenario(cfg.data.scenario)
    params = build_algorithm(build_model(scenario.model_config(cfg.model)), cfg.meta).init_meta_params()
    param_shapes = {tuple(p.shape) for p in params.values()}
    image_shape = (scenario.channels, scenario.image_size, scenario.image_size)

    audit = deployment["root"] / "consortium" / "coordinator" / "logs" / "fleet-audit.jsonl"
    pushed = [e for e in map(json.loads, audit.read_text().splitlines()) if "type" in e]
    assert pushed, "the audit saw nothing"
    assert {e["type"] for e in pushed} <= {"Message", "RecordDict", "ArrayRecord", "Array", "ArrayChunk", "MetricRecord", "ConfigRecord"}
    arrays = [tuple(e["shape"]) for e in pushed if e["type"] == "Array"]
    assert arrays and set(arrays) <= param_shapes
    assert not any(shape[-2:] == image_shape[-2:] or shape == image_shape for shape in arrays)
    for entry in pushed:
        if entry["type"] == "MetricRecord":
            assert set(entry["keys"].values()) <= {"int", "float"}, entry  # scalars only, no lists of per-example values
        if entry["type"] == "ConfigRecord":
            assert set(entry["keys"]) <= {"site-name", "role", "num-train", "num-test", "device"}, entry
    nodes = {e["node_id"] for e in pushed}
    assert len(nodes) == len(SITES)


def test_every_process_is_stopped(deployment):
    assert deployment["site_codes"] == [0, 0, 0], [_log(deployment, name)[-2000:] for name in SITES]
    assert deployment["left_running"] == []
