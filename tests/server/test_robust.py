"""Rejecting bad meta-gradients by name, and robust aggregation rules against hand computations."""

import json

import pytest
import torch

from common.privacy import l2_norm
from server.aggregation import Aggregation
from server.replies import ReplyLimits, check_update
from server.report import RESULTS, Recorder
from server.robust import combine
from tests.server.test_fedmeta import reply, sites, strategy_for, task_identity  # noqa: F401 -- fixtures, used by name

REF = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}


@pytest.mark.parametrize(
    ("update", "weight", "max_norm", "message"),
    [
        ({"w": torch.ones(2, 2)}, 1, 0, "wrong meta-gradient keys (missing ['b']"),
        ({**REF, "extra": torch.ones(1)}, 1, 0, "unexpected ['extra']"),
        ({"w": torch.ones(4), "b": torch.ones(2)}, 1, 0, "'w' has shape (4,), expected (2, 2)"),
        ({"w": torch.ones(2, 2, dtype=torch.int64), "b": torch.ones(2)}, 1, 0, "dtype torch.int64"),
        ({"w": torch.tensor([[0.0, float("inf")], [0, 0]]), "b": torch.ones(2)}, 1, 0, "'w' has non-finite values"),
        ({"w": torch.ones(2, 2), "b": torch.ones(2)}, 0, 0, "num-tasks=0 is not a positive count"),
        ({"w": torch.ones(2, 2) * 1e9, "b": torch.ones(2)}, 1, 10.0, "norm 2e+09 exceeds the bound max-update-norm=10"),
    ],
)
def test_bad_updates_are_rejected_with_the_reason(update, weight, max_norm, message):
    assert message in check_update(update, REF, weight, max_norm)


def test_a_good_update_passes_and_the_norm_is_the_global_l2_norm():
    update = {"w": torch.full((2, 2), 3.0), "b": torch.tensor([4.0, 0.0])}
    assert l2_norm(update) == pytest.approx((4 * 9 + 16) ** 0.5)
    assert check_update(update, REF, 2, max_norm=8.0) is None
    assert check_update({k: v.half() for k, v in update.items()}, REF, 2) is None  # float16 transport is fine


def test_rules_against_hand_computation():
    values = [1.0, 2.0, 3.0, 100.0]
    updates = [({"x": torch.tensor([v, -v])}, w) for v, w in zip(values, [1, 1, 1, 5])]
    assert combine(updates, "mean")["x"].tolist() == pytest.approx([(1 + 2 + 3 + 500) / 8, -(1 + 2 + 3 + 500) / 8])
    assert combine(updates, "median")["x"].tolist() == pytest.approx([2.5, -2.5])  # task counts buy no influence
    assert combine(updates, "trimmed-mean", 0.25)["x"].tolist() == pytest.approx([2.5, -2.5])  # 1 and 100 cut
    assert combine(updates, "trimmed-mean", 0.0)["x"].tolist() == pytest.approx([26.5, -26.5])
    with pytest.raises(ValueError, match="aggregator='max'"):
        combine(updates, "max")


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed-mean"])
def test_hostile_sites_are_rejected_by_name_and_the_model_stays_finite(tmp_path, rule):
    """Five sites: two honest, one NaN, one 1e9-scaled, one wrong-shaped. The bad three are named
    in results.json; the step uses the honest two only."""
    roster = sites(["train"] * 5)
    recorder = Recorder(tmp_path, {}, "synthetic", "maml", [s.as_dict() for s in roster.values()])
    p0 = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    strategy = strategy_for(
        roster,
        p0,
        "sgd",
        0.5,
        recorder=recorder,
        aggregation=Aggregation(rule, trim_fraction=0.0),
        limits=ReplyLimits(max_update_norm=100.0),
    )
    nodes = sorted(roster)
    g1, g2 = torch.tensor([[4.0, 0.0], [0.0, 8.0]]), torch.tensor([[0.0, 4.0], [-4.0, 0.0]])
    replies = [
        reply(nodes[0], {"w": g1}, 1),
        reply(nodes[1], {"w": g2}, 1),
        reply(nodes[2], {"w": torch.full((2, 2), float("nan"))}, 1),
        reply(nodes[3], {"w": g1 * 1e9}, 1),
        reply(nodes[4], {"w": torch.ones(3)}, 1),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and torch.isfinite(strategy.params["w"]).all()
    torch.testing.assert_close(strategy.params["w"], p0["w"] - 0.5 * (g1 + g2) / 2)  # every rule agrees on two values
    errors = json.loads((tmp_path / RESULTS).read_text())["rounds"][0]["train_errors"]
    assert set(errors) == {"s2", "s3", "s4"}
    assert "non-finite" in errors["s2"] and "exceeds the bound" in errors["s3"] and "shape (3,)" in errors["s4"]


def test_too_few_acceptable_updates_leave_the_model_unchanged(tmp_path):
    roster = sites(["train"] * 3)
    recorder = Recorder(tmp_path, {}, "synthetic", "maml", [s.as_dict() for s in roster.values()])
    p0 = {"w": torch.ones(2, 2)}
    strategy = strategy_for(roster, p0, "sgd", 0.5, recorder=recorder, aggregation=Aggregation(min_train_sites=2))
    nodes = sorted(roster)
    arrays, metrics = strategy.aggregate_train(
        1, [reply(nodes[0], {"w": torch.ones(2, 2)}, 1), reply(nodes[1], {"w": torch.full((2, 2), float("nan"))}, 1)]
    )
    assert arrays is None and metrics is None and torch.equal(strategy.params["w"], p0["w"])
    assert json.loads((tmp_path / RESULTS).read_text())["rounds"][0]["updated"] is False
