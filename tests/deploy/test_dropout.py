"""A deployment with secure aggregation and differential privacy (noise added by the sites): four
real `fedmeta site` processes. One is killed with SIGKILL in the middle of the first round's
secure aggregation, after it shared its keys, and restarted at once. The round completes with the
other three, the restarted site rejoins for the second round, the run finishes, and epsilon is
reported per round."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from deploy.processes import free_port
from deploy.provision import provision
from tests.deploy.bundle import set_keys
from tests.procs import BIN, Processes, group_gone, wait_for_port

# about 5 minutes on 2 cores: `make test-slow` (CI keeps the 3-site deployment, and the in-process
# secure-aggregation dropout test in tests/server/test_secure.py)
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = ["site-0", "site-1", "site-2", "site-3"]
VICTIM = "site-2"


def test_a_site_killed_mid_round_does_not_stop_the_federation_and_rejoins(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    fleet = free_port()
    provision(tmp_path / "c", ["localhost"], SITES, port=fleet)
    coordinator_toml = tmp_path / "c" / "coordinator" / "coordinator.toml"
    set_keys(
        coordinator_toml,
        control_port=free_port(),
        min_sites=4,
        num_server_rounds=2,
        tasks_per_round=2,
        eval_every=2,
        eval_tasks=3,
        model_width=8,
        model_groups=2,
        model_depth=2,
        inner_steps=1,
        round_timeout=90.0,
        secure_aggregation=True,
        secagg_threshold=0.5,
        dp_clip=5.0,
        dp_noise_multiplier=0.8,
        dp_noise="sites",
    )
    for name in SITES:
        set_keys(tmp_path / "c" / "sites" / name / "site.toml", runtime_port=free_port(), device="cpu")
    procs = Processes(logs)
    try:
        coordinator = procs.start(
            "coordinator",
            [str(BIN / "fedmeta"), "coordinator", "--config", str(coordinator_toml), "--run", "--exit-after-run"],
        )
        wait_for_port(coordinator, fleet, tmp_path / "c" / "ca" / "ca.pem")
        sites = {
            name: procs.start(
                name, [str(BIN / "fedmeta"), "site", "--config", str(tmp_path / "c" / "sites" / name / "site.toml")]
            )
            for name in SITES
        }
        # the victim dies as soon as it is asked for its masked vector: its keys are shared by then
        victim_log = logs / f"{VICTIM}.log"
        deadline = time.monotonic() + 400
        while "query.secagg_mask" not in victim_log.read_text():
            assert coordinator.poll() is None, coordinator.log_path.read_text()[-5000:]
            assert time.monotonic() < deadline, "the first round never reached the masking stage"
            time.sleep(0.05)
        # a crash, not a shutdown: SIGKILL to the site and its SuperNode at once (their arguments name its bundle)
        victim_dir = str(tmp_path / "c" / "sites" / VICTIM)
        subprocess.run(["pkill", "-KILL", "-f", victim_dir], check=False)
        assert group_gone(sites[VICTIM].pid)
        deadline = time.monotonic() + 15
        while subprocess.run(["pgrep", "-f", victim_dir], capture_output=True).stdout:
            assert time.monotonic() < deadline, "the victim's processes survived SIGKILL"
            time.sleep(0.2)
        # it comes back: same bundle, same key, so the same Flower node
        procs.start(
            f"{VICTIM}-again",
            [str(BIN / "fedmeta"), "site", "--config", str(tmp_path / "c" / "sites" / VICTIM / "site.toml")],
        )
        code = coordinator.wait(600)
        assert code == 0, coordinator.log_path.read_text()[-5000:]
    finally:
        procs.kill_all()
    results = json.loads((tmp_path / "c" / "coordinator" / "results" / "results.json").read_text())
    first, second = results["rounds"]
    assert first["updated"] and second["updated"]  # both rounds moved the model
    assert (
        set(first["train_errors"]) == {VICTIM} and sorted(first["train"]) == SITES
    )  # all four trained; one never finished
    assert "masking" in first["train_errors"][VICTIM]
    # back within Flower's heartbeat window, it waits to be activated again; it rejoins by round 2's end
    assert sorted(results["final"]["evaluate"]) == SITES
    eps = [r["privacy"]["epsilon"] for r in results["rounds"]]
    assert 0 < eps[0] < eps[1]
    assert first["privacy"]["noise-multiplier"] == pytest.approx(0.8 * (3 / 4) ** 0.5)  # three noise shares arrived
    assert second["privacy"]["noise-multiplier"] == pytest.approx(0.8 * (len(second["train"]) / 4) ** 0.5)
