"""FedMeta's pieces alone (the outer optimizer, sampling, the schedule) and its aggregation
against a hand computation."""

import pytest
import torch
from flwr.app import ArrayRecord

from server.fedmeta import FedMeta
from server.optimizer import OuterOptimizer
from server.schedule import Sampling, Schedule


def params():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 2, generator=g), "inner_lr.w": torch.full((3, 2), 0.1)}


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_outer_steps_match_torch_optimizer_with_persistent_state(name):
    optimizer = OuterOptimizer(params(), name, 0.05)
    reference = {k: v.clone() for k, v in params().items()}
    ref_opt = (torch.optim.Adam if name == "adam" else torch.optim.SGD)(reference.values(), lr=0.05)
    for step in range(3):
        grads = {k: torch.full_like(v, step + 1.0) * (1 if k == "w" else -1) for k, v in reference.items()}
        new = optimizer.step(grads)
        for k, p in reference.items():
            p.grad = grads[k]
        ref_opt.step()
        for k in reference:
            torch.testing.assert_close(new[k], reference[k])


def test_mismatched_gradient_keys_are_rejected():
    with pytest.raises(ValueError, match=r"\['inner_lr.w'\]"):
        OuterOptimizer(params()).step({"w": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="outer-optimizer='lbfgs'"):
        OuterOptimizer(params(), "lbfgs")


def strategy_for(roster, p=None, kind="adam", lr=1e-3, **kwargs) -> FedMeta:
    """A FedMeta over `roster` whose meta-parameters are `p` (default: `params()`)."""
    return FedMeta(OuterOptimizer(params() if p is None else p, kind, lr), roster, **kwargs)


def sites(roles):
    from server.sites import SiteInfo

    # 64-bit node ids, as Flower assigns them: a float round trip would corrupt them
    return {2**63 + 977 * i: SiteInfo(2**63 + 977 * i, f"s{i}", role, 10, 5) for i, role in enumerate(roles)}


def test_only_training_sites_are_sampled_reproducibly_with_exact_node_ids():
    from flwr.app import ConfigRecord

    roles = ["train"] * 6 + ["heldout"] * 2
    strategy = strategy_for(sites(roles), sampling=Sampling(0.5, 3))
    arrays = ArrayRecord(params())
    picked = [m.metadata.dst_node_id for m in strategy.configure_train(1, arrays, ConfigRecord(), grid=None)]
    again = strategy_for(sites(roles), sampling=Sampling(0.5, 3))
    assert picked == [m.metadata.dst_node_id for m in again.configure_train(1, arrays, ConfigRecord(), grid=None)]
    training = {n for n, s in sites(roles).items() if s.role == "train"}
    assert len(picked) == 3 and set(picked) <= training
    other_round = [m.metadata.dst_node_id for m in strategy.configure_train(2, arrays, ConfigRecord(), grid=None)]
    assert set(other_round) <= training


def test_every_site_evaluates_on_schedule_and_after_the_last_round():
    from flwr.app import ConfigRecord

    strategy = strategy_for(sites(["train", "train", "heldout"]), schedule=Schedule(num_rounds=5, eval_every=3))
    arrays = ArrayRecord(params())
    assert [len(list(strategy.configure_evaluate(r, arrays, ConfigRecord(), grid=None))) for r in range(1, 6)] == [
        0,
        0,
        3,
        0,
        3,
    ]


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps every Message with the running task's identity; outside a run, set one."""
    from flwr.supercore.task_identity import TaskIdentity

    names = ("_task_id", "_run_id", "_node_id")
    saved = [getattr(TaskIdentity, n, None) for n in names]
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    for name, value in zip(names, saved):
        setattr(TaskIdentity, name, value)


def reply(node, grads, tasks, loss=1.0):
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    sent = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    metrics = MetricRecord({"num-tasks": tasks, "meta-loss": loss, "query-acc": 0.5, "compute-s": 0.1})
    return Message(content=RecordDict({"arrays": ArrayRecord(grads), "metrics": metrics}), reply_to=sent)


@pytest.mark.parametrize("wire", [torch.float32, torch.float16])
def test_aggregate_train_is_the_task_weighted_mean_then_one_sgd_step(wire):
    """Hand computation: sites with 1 and 3 tasks send g1, g2; the step is p - lr (g1 + 3 g2) / 4."""
    p0 = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    strategy = strategy_for(sites(["train", "train", "train"]), p0, "sgd", 0.5, transport_dtype=wire)
    nodes = sorted(strategy.sites)
    g1, g2 = torch.tensor([[4.0, 0.0], [0.0, 8.0]]), torch.tensor([[0.0, 4.0], [-4.0, 0.0]])
    bad = torch.tensor([[float("nan"), 0.0], [0.0, 0.0]])
    replies = [
        reply(nodes[0], {"w": g1.to(wire)}, 1, 1.0),
        reply(nodes[1], {"w": g2.to(wire)}, 3, 2.0),
        reply(nodes[2], {"w": bad}, 5),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = p0["w"] - 0.5 * (1 * g1 + 3 * g2) / 4  # the NaN site is dropped, not averaged
    assert torch.equal(strategy.params["w"], expected)
    sent = arrays.to_torch_state_dict()["w"]
    assert sent.dtype == wire and torch.equal(sent.float(), expected.to(wire).float())
    assert metrics["meta-loss"] == pytest.approx(1.75)  # task-weighted: (1 * 1.0 + 3 * 2.0) / 4


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive():
    """Float sums are not associative: summing in arrival order made two runs of one seed differ.
    Replies are combined in site-name order, so any arrival order gives the same bits."""
    p0 = {"w": torch.zeros(2)}
    roster = sites(["train", "train", "train"])
    nodes = sorted(roster)
    values = [torch.tensor([1.0, 3.0]), torch.tensor([1e16, -1e16]), torch.tensor([-1e16, 1e16])]
    results = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        strategy = strategy_for(roster, {k: v.clone() for k, v in p0.items()}, "sgd", 1.0)
        strategy.aggregate_train(1, [reply(nodes[i], {"w": values[i]}, 1) for i in order])
        results.append(strategy.params["w"].clone())
    assert all(torch.equal(r, results[0]) for r in results)


def test_each_round_steps_at_its_scheduled_learning_rate():
    """Warm-up over 1 round then cosine: round 1 steps at half the rate, round 2 at the full rate."""
    p0 = {"w": torch.zeros(2)}
    schedule = Schedule(num_rounds=4, eval_every=4, lr_schedule="cosine", lr_warmup=1)
    strategy = strategy_for(sites(["train"]), p0, "sgd", 0.5, schedule=schedule)
    node = next(iter(strategy.sites))
    one = torch.ones(2)
    strategy.aggregate_train(1, [reply(node, {"w": one}, 1)])
    assert torch.equal(strategy.params["w"], -0.25 * one)
    strategy.aggregate_train(2, [reply(node, {"w": one}, 1)])
    assert torch.equal(strategy.params["w"], -0.75 * one)


def test_a_sweep_never_scores_the_held_out_sites():
    from flwr.app import ConfigRecord

    roster = sites(["train", "validation", "heldout"])
    blind = strategy_for(roster, schedule=Schedule(num_rounds=1, eval_every=1, eval_heldout=False))
    sent = [m.metadata.dst_node_id for m in blind.configure_evaluate(1, ArrayRecord(params()), ConfigRecord(), None)]
    assert [roster[n].role for n in sent] == ["train", "validation"]
