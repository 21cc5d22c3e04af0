"""What `fedmeta coordinator` and `fedmeta site` refuse before starting anything, and why."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.config import ConfigError, load_coordinator_config, load_site_config
from deploy.coordinator import Coordinator, check_coordinator
from deploy.pki import pem_key, write_secret
from deploy.processes import free_port
from deploy.provision import provision, revoke_site
from deploy.site import check_site, refusal
from tests.common.data.hospital import write_site
from tests.deploy.bundle import set_keys
from tests.procs import BIN


@pytest.fixture
def bundles(tmp_path):
    provision(tmp_path, ["coordinator.example.org", "10.0.0.5"], ["site-0", "st-mary"])
    return tmp_path


def coordinator_toml(bundles):
    return bundles / "coordinator" / "coordinator.toml"


def site_toml(bundles, name="site-0", **keys):
    path = bundles / "sites" / name / "site.toml"
    set_keys(path, device="cpu", runtime_port=free_port(), **keys)
    return path


def test_a_provisioned_coordinator_bundle_loads_and_passes(bundles):
    cfg = load_coordinator_config(coordinator_toml(bundles))
    assert cfg.ca_cert == bundles / "coordinator" / "ca.pem"  # relative to the TOML, wherever it runs from
    assert cfg.run_config["out-dir"] == str(bundles / "coordinator" / "results")
    assert cfg.hosts == ("coordinator.example.org", "10.0.0.5")
    assert check_coordinator(cfg) == []


@pytest.mark.parametrize("resume", [False, True])
def test_the_run_command_carries_the_full_run_config(bundles, resume):
    import tomllib

    cfg = load_coordinator_config(coordinator_toml(bundles))
    command = Coordinator(cfg, echo=lambda _: None).run_command(resume=resume)
    app = tomllib.loads((cfg.state_dir / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert command[1:3] == ["run", str(cfg.state_dir / "app")] and command[-1] == "--stream"
    config = app["config"]
    assert config["resume"] is resume and config["force-resume"] is False
    assert config["out-dir"] == str(bundles / "coordinator" / "results") and config["num-server-rounds"] == 50
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}  # no code, only names


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"fleet_port": 70000}, "is not a TCP port"),
        ({"fleet_port": 9093}, "must differ"),
        ({"audit": "yes"}, "audit = 'yes' should be a bool"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"inner_lr": "fast"}, "inner-lr='fast': expected a float"),
    ],
)
def test_bad_coordinator_configs_name_the_key(bundles, keys, message):
    path = coordinator_toml(bundles)
    if "inner_lr" in keys or "colour" in keys:
        text = path.read_text()
        text = (
            text.replace("state-dir", 'colour = "blue"\nstate-dir')
            if "colour" in keys
            else text + 'inner-lr = "fast"\n'
        )
        path.write_text(text)
    else:
        set_keys(path, **keys)
    with pytest.raises(ConfigError, match=r"coordinator.toml") as error:
        load_coordinator_config(path)
    assert message in str(error.value)


def test_coordinator_checks_catch_a_readable_key_a_foreign_key_and_a_missing_host(bundles):
    path = coordinator_toml(bundles)
    key = bundles / "coordinator" / "server.key"
    key.chmod(0o644)
    set_keys(path, hosts=["coordinator.example.org", "fl.hospital.net"])
    problems = check_coordinator(load_coordinator_config(path))
    assert any("chmod 600" in p for p in problems)
    assert any("not valid for ['fl.hospital.net']" in p for p in problems)
    key.unlink()
    write_secret(key, pem_key(ec.generate_private_key(ec.SECP384R1())))
    assert any("does not belong to server-cert" in p for p in check_coordinator(load_coordinator_config(path)))


def test_missing_coordinator_files_are_named(bundles):
    (bundles / "coordinator" / "server.pem").unlink()
    problems = check_coordinator(load_coordinator_config(coordinator_toml(bundles)))
    assert problems == [
        f"server-cert {bundles / 'coordinator' / 'server.pem'}: no such file (it comes with the coordinator bundle "
        "from `fedmeta provision new`)"
    ]


def test_the_coordinator_check_reads_the_runs_scenario_with_its_kind_of_task(bundles, tmp_path):
    """A run's settings fail at --check, not when the ServerApp starts: here hospital tasks over
    folder sites whose consortium lists no classes, then a scenario that does not exist."""
    scenario = tmp_path / "folders.toml"
    scenario.write_text('name = "folders"\n[[sites]]\nname = "st-mary"\nsource = "folder"\npath = "st-mary"\n')
    path = coordinator_toml(bundles)
    set_keys(path, scenario=str(scenario))
    assert check_coordinator(load_coordinator_config(path)) == []
    set_keys(path, tasks="hospital")  # appended under [run-config]
    problems = check_coordinator(load_coordinator_config(path))
    assert len(problems) == 1 and problems[0].startswith(f"[run-config] in {path}:"), problems
    assert "list the consortium's classes, labels = [" in problems[0]
    scenario.write_text(scenario.read_text().replace("[[sites]]", 'labels = ["benign", "malignant"]\n[[sites]]'))
    assert check_coordinator(load_coordinator_config(path)) == []
    set_keys(path, scenario="nope")
    assert any("no scenario 'nope'" in p for p in check_coordinator(load_coordinator_config(path)))


def test_a_scenario_site_is_ready_with_its_bundle(bundles):
    result = check_site(load_site_config(site_toml(bundles)))
    assert result.problems == []
    assert result.summary.startswith("site-0 (train): 300 train / 200 test examples")


def test_a_hospital_site_needs_its_folder(bundles, tmp_path):
    path = site_toml(bundles, "st-mary")
    assert any("not a site of scenario 'synthetic'" in p for p in check_site(load_site_config(path)).problems)
    set_keys(path, data_dir=str(tmp_path / "nowhere"))
    assert any("nowhere does not exist" in p for p in check_site(load_site_config(path)).problems)
    folder = write_site(tmp_path / "st-mary-images", {"benign": 25, "malignant": 25})
    set_keys(path, data_dir=str(folder))
    result = check_site(load_site_config(path))
    assert result.problems == [] and result.summary.endswith("examples, 2 classes")
    (folder / "benign_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a corrupt image: named, not a crash
    problems = check_site(load_site_config(path)).problems
    assert any("benign_0.png" in p for p in problems), problems


def test_site_checks_catch_key_permissions_device_and_a_taken_port(bundles):
    path = site_toml(bundles)
    (bundles / "sites" / "site-0" / "auth.key").chmod(0o644)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # another SuperNode serving on it
        set_keys(path, runtime_port=taken.getsockname()[1], device="cuda:7")
        problems = check_site(load_site_config(path))
    assert any("chmod 600" in p for p in problems.problems)
    assert any("in use" in p for p in problems.problems)
    if torch.cuda.device_count() < 8:
        assert any(p.startswith("device:") for p in problems.problems)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('coordinator = "no-port"', "should be host:port"),
        ("name = 3", "name = 3 should be a str"),
    ],
)
def test_bad_site_configs_name_the_key(bundles, text, message):
    path = site_toml(bundles)
    key = text.split(" = ")[0]
    path.write_text("\n".join(text if line.startswith(f"{key} =") else line for line in path.read_text().splitlines()))
    with pytest.raises(ConfigError, match=message):
        load_site_config(path)


def test_refusals_are_read_from_flower_output(bundles):
    cfg = load_site_config(site_toml(bundles))
    reason, may_pass = refusal("[code: 2004] Failed to activate SuperNode.", cfg)
    assert "not registered" in reason and may_pass  # or still online from before a restart: worth a wait
    reason, may_pass = refusal("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", cfg)
    assert "not trusted" in reason and not may_pass
    assert refusal("Connection attempt failed, retrying", cfg) is None


@pytest.mark.integration
def test_registrations_follow_the_authorized_list_across_restarts(bundles):
    """A real SuperLink: provisioned sites are registered, a revoked one is unregistered, a restart re-registers
    nobody."""
    path = coordinator_toml(bundles)
    set_keys(path, fleet_port=free_port(), control_port=free_port(), hosts=["localhost"])
    provision(bundles / "fresh", ["localhost"], ["site-0", "st-mary"])  # certificates that name localhost
    for name in ("ca.pem", "server.pem", "server.key", "authorized-sites.csv"):
        (bundles / "coordinator" / name).unlink()
        (bundles / "coordinator" / name).write_bytes((bundles / "fresh" / "coordinator" / name).read_bytes())
    (bundles / "coordinator" / "server.key").chmod(0o600)
    cfg = load_coordinator_config(path)
    lines: list[str] = []
    coordinator = Coordinator(cfg, echo=lines.append)
    try:
        coordinator.start()
        registry = json.loads(coordinator.registry_path.read_text())
        assert sorted(registry) == ["site-0", "st-mary"] and all(e["node_id"] for e in registry.values())
        nodes = coordinator.flwr("supernode", "list")["nodes"]
        assert {int(n["node-id"]) for n in nodes} == {e["node_id"] for e in registry.values()}
        revoke_site(bundles / "fresh", "st-mary")
        (bundles / "coordinator" / "authorized-sites.csv").write_bytes(
            (bundles / "fresh" / "coordinator" / "authorized-sites.csv").read_bytes()
        )
        coordinator.sync_sites()
        assert sorted(json.loads(coordinator.registry_path.read_text())) == ["site-0"]
        statuses = {int(n["node-id"]): n["status"] for n in coordinator.flwr("supernode", "list")["nodes"]}
        assert statuses.get(registry["st-mary"]["node_id"], "unregistered") == "unregistered"
    finally:
        coordinator.stop()
    lines.clear()
    again = Coordinator(cfg, echo=lines.append)
    try:
        again.start()  # same state dir: the database and the registry survive
        assert not any("registered" in line and "unregistered" not in line for line in lines), lines
    finally:
        again.stop()
    assert subprocess.run(["pgrep", "-f", str(cfg.state_dir)], capture_output=True).stdout == b""


def _localhost_coordinator(bundles, **keys) -> Path:
    """The bundle's coordinator, re-provisioned for localhost on free ports (a real SuperLink can start)."""
    path = coordinator_toml(bundles)
    provision(bundles / "fresh", ["localhost"], ["site-0", "st-mary"])
    for name in ("ca.pem", "server.pem", "server.key", "authorized-sites.csv"):
        (bundles / "coordinator" / name).unlink()
        (bundles / "coordinator" / name).write_bytes((bundles / "fresh" / "coordinator" / name).read_bytes())
    (bundles / "coordinator" / "server.key").chmod(0o600)
    set_keys(path, fleet_port=free_port(), control_port=free_port(), hosts=["localhost"], **keys)
    return path


def _coordinator(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fedmeta"), "coordinator", *args], capture_output=True, text=True, timeout=timeout)


def _leftovers(root: Path, within: float = 5.0) -> list[str]:
    """Processes whose command line names a file under `root`, still there `within` seconds on."""
    deadline = time.monotonic() + within
    while True:
        found = subprocess.run(["pgrep", "-af", str(root)], capture_output=True, text=True).stdout.splitlines()
        found = [line for line in found if "pgrep" not in line]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    # a systemd unit runs `--run` and must see the failure; the other way out is one `if` away
    [["--run"], pytest.param(["--run", "--exit-after-run"], marks=pytest.mark.slow)],
)
def test_a_run_that_times_out_exits_non_zero_and_leaves_no_process(bundles, args):
    """min-sites=9 with no site: the ServerApp's TimeoutError is the coordinator's exit code 6,
    with or without --exit-after-run, and the SuperLink's SuperExec (in a session of its own)
    goes with it."""
    path = _localhost_coordinator(bundles, min_sites=9, round_timeout=2.0)
    done = _coordinator("--config", str(path), *args)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 6, done.stdout + done.stderr
    assert "ended finished:failed" in output and "only 0 of min-sites=9 sites connected" in output
    assert _leftovers(bundles) == []


@pytest.mark.integration
def test_sigterm_stops_every_child_within_seconds(bundles):
    path = _localhost_coordinator(bundles, min_sites=9, round_timeout=600.0)
    process = subprocess.Popen(
        [str(BIN / "fedmeta"), "coordinator", "--config", str(path), "--run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        for line in process.stdout:  # until the ServerApp waits for sites: SuperLink, SuperExec and ServerApp are up
            lines.append(line)
            if "waiting for sites" in line:
                break
        assert any("waiting for sites" in line for line in lines), "".join(lines)
        assert len(_leftovers(bundles, within=0)) >= 3
        process.terminate()
        assert process.wait(30) == 0
        assert _leftovers(bundles) == []
    finally:
        process.kill()


@pytest.mark.integration
def test_an_unusable_checkpoint_is_refused_before_anything_starts(bundles):
    path = _localhost_coordinator(bundles)
    out = bundles / "coordinator" / "results"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"\x80" * 100)  # a torn file
    start = time.monotonic()
    done = _coordinator("--config", str(path), "--run", "--resume")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "checkpoint.safetensors is not a readable fedmeta checkpoint" in " ".join(done.stderr.split())
    assert not (bundles / "coordinator" / "state" / "superlink.db").exists()  # no SuperLink was started
    done = _coordinator(
        "--config", str(path), "--run"
    )  # without --resume: an earlier run's checkpoint is not overwritten
    assert done.returncode == 1 and "--resume" in done.stderr, done.stderr
    assert time.monotonic() - start < 30
