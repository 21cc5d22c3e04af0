"""The coordinator's DP mechanism and accounting: bounded influence per site, the noise it claims,
epsilon that grows with rounds, survives a resume, and stays within the classic RDP bound."""

import json
import math
from itertools import pairwise

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

pytest.importorskip("dp_accounting", reason="install fedmeta's dependencies (flwr[dp])")

from common.privacy import l2_norm
from server.aggregation import Aggregation
from server.privacy import Privacy
from server.report import RESULTS, Recorder
from tests.server.test_fedmeta import reply, sites, strategy_for, task_identity  # noqa: F401


def classic_epsilon(rounds: int, sigma: float, delta: float) -> float:
    """Gaussian mechanism, RDP composition, the textbook conversion (dp-accounting's is tighter)."""
    return min(
        rounds * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in [1 + x / 10 for x in range(1, 1000)]
    )


def test_a_hostile_site_moves_the_mean_by_at_most_the_bound_over_n():
    privacy = Privacy(clip=1.0, noise_multiplier=1e-9, delta=1e-5, mode="server", population=4)
    honest = {"w": torch.zeros(10)}
    hostile = {"w": torch.full((10,), 1e9)}
    mean, multiplier = privacy.aggregate([honest, honest, honest, hostile], sampled=4)
    assert l2_norm(mean) <= 1.0 / 4 + 1e-6
    assert multiplier == 1e-9


def test_server_noise_has_the_claimed_spread():
    privacy = Privacy(clip=2.0, noise_multiplier=0.8, delta=1e-5, mode="server", population=5)
    updates = [{"w": torch.zeros(200_000)} for _ in range(5)]
    mean, _ = privacy.aggregate(updates, sampled=5)
    assert float(mean["w"].std()) == pytest.approx(0.8 * 2.0 / 5, rel=0.02)


def test_missing_noise_shares_are_accounted():
    privacy = Privacy(clip=1.0, noise_multiplier=2.0, delta=1e-5, mode="sites", population=4)
    _, multiplier = privacy.aggregate([{"w": torch.ones(3)}, {"w": torch.ones(3)}], sampled=4)
    assert multiplier == pytest.approx(2.0 * math.sqrt(2 / 4))  # half the sites: half the noise variance


def test_epsilon_grows_with_rounds_within_the_classic_bound_and_survives_a_restart():
    sigma, delta = 1.1, 1e-5
    privacy = Privacy(clip=1.0, noise_multiplier=sigma, delta=delta, mode="server", population=3)
    epsilons = [privacy.account(sigma, 3)["epsilon"] for _ in range(5)]
    assert all(b > a > 0 for a, b in pairwise(epsilons))
    for rounds, eps in enumerate(epsilons, start=1):
        assert eps <= classic_epsilon(rounds, sigma, delta) * 1.001
    restored = Privacy(clip=1.0, noise_multiplier=sigma, delta=delta, mode="server", population=3)
    restored.accountant.load_state_dict(json.loads(json.dumps(privacy.accountant.state_dict())))  # as in the checkpoint
    assert restored.account(sigma, 3)["epsilon"] == pytest.approx(privacy.account(sigma, 3)["epsilon"])


def test_fedmeta_records_epsilon_per_round_and_clips_what_sites_sent(tmp_path):
    roster = sites(["train"] * 3)
    recorder = Recorder(tmp_path, {}, "synthetic", "maml", [s.as_dict() for s in roster.values()])
    privacy = Privacy(clip=0.5, noise_multiplier=1e-3, delta=1e-5, mode="server", population=3)
    p0 = {"w": torch.zeros(4)}
    strategy = strategy_for(roster, p0, "sgd", 1.0, recorder=recorder, aggregation=Aggregation(privacy=privacy))
    nodes = sorted(roster)
    for rnd in (1, 2):
        strategy.configure_train(rnd, ArrayRecord(p0), ConfigRecord(), grid=None)
        before = strategy.params["w"].clone()
        strategy.aggregate_train(
            rnd, [reply(n, {"w": torch.full((4,), 100.0)}, 10 * (i + 1)) for i, n in enumerate(nodes)]
        )
        assert (
            l2_norm({"w": strategy.params["w"] - before}) <= 0.5 + 1e-2
        )  # SGD at rate 1: the step is the private mean
    rounds = json.loads((tmp_path / RESULTS).read_text())["rounds"]
    eps = [r["privacy"]["epsilon"] for r in rounds]
    assert eps[1] > eps[0] > 0 and rounds[0]["privacy"]["delta"] == 1e-5
