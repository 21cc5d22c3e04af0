"""A federated run on Flower's simulation engine with secure aggregation and site-level
differential privacy (noise added by the sites): epsilon is reported per round and grows, the
coordinator received only masked vectors, and the run still learns something finite."""

import json

import pytest

from tests.simulation.test_simulate import THREE_ROUNDS, TINY, fedmeta

pytestmark = pytest.mark.integration


def test_a_private_run_reports_growing_epsilon(tmp_path):
    pytest.importorskip("dp_accounting", reason="install fedmeta's dependencies (flwr[dp])")
    out = tmp_path / "dp"
    result = fedmeta(
        "simulate",
        *THREE_ROUNDS,
        "--out",
        str(out),
        "--run-config",
        TINY + " dp-clip=0.5 dp-noise-multiplier=1.2 dp-noise='sites' dp-delta=1e-4 secure-aggregation=true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    privacy = [r["privacy"] for r in rounds]
    assert [p["delta"] for p in privacy] == [1e-4] * 3
    assert 0 < privacy[0]["epsilon"] < privacy[1]["epsilon"] < privacy[2]["epsilon"]
    assert all(p["noise-multiplier"] == pytest.approx(1.2) for p in privacy)  # every site's share arrived
    assert rounds[-1]["summary"]["heldout"]["acc-after"][0] >= 0
    assert all(r["updated"] and not r.get("train_errors") for r in rounds)
    assert all(
        set(m) == {"meta-loss", "query-acc", "compute-s"} for r in rounds for m in r["train"].values()
    )  # no task counts
