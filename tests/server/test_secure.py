"""Secure aggregation through the real ServerApp strategy and the real ClientApp handlers.

`LocalGrid` carries messages in-process to `client.app.app`, with one Flower `Context` per
site that persists across messages the way a SuperNode's does. It can let a site die at a given
stage. That is the only stand-in: keys, shares, masks and meta-gradients are all real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from common import secagg
from common.algorithms import build_algorithm
from common.backbones import build_model
from common.runconfig import flat_run_config, parse_run_config
from common.scenario import load_scenario
from server.fedmeta import FedMeta
from server.optimizer import OuterOptimizer
from server.secure import SecureAggregation
from server.sites import SiteInfo
from tests.server.local_grid import NODES, TINY_RUN, LocalGrid
from tests.server.test_fedmeta import task_identity  # noqa: F401 -- autouse fixture

RUN = {
    **TINY_RUN,
    "ways": 3,
    "secure-aggregation": True,
    "outer-lr": 1.0,
}


def strategy_and_params(run_config):
    cfg = parse_run_config(run_config)
    model = build_model(load_scenario(cfg.data.scenario).model_config(cfg.model))
    params = build_algorithm(model, cfg.meta).init_meta_params()
    sites = {n: SiteInfo(n, f"site-{i}", "train", 300, 200) for i, n in enumerate(NODES)}
    strategy = FedMeta(OuterOptimizer(params, "sgd", 1.0), sites, secure=SecureAggregation(weight_scale=2.0))
    return strategy, params


def plain_mean(run_config, params, nodes):
    """What the same sites would send without secure aggregation, task-weighted."""
    grid = LocalGrid(run_config)
    sent = RecordDict({"arrays": ArrayRecord(params), "config": ConfigRecord({"server-round": 1})})
    replies = grid.send_and_receive(
        [Message(content=sent, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]
    )
    grads = [(r.content["arrays"].to_torch_state_dict(), float(r.content["metrics"]["num-tasks"])) for r in replies]
    total = sum(w for _, w in grads)
    return {k: sum(g[k].double() * w for g, w in grads) / total for k in params}


@pytest.mark.parametrize("dead", [{}, {202: "query.secagg_mask"}])
def test_the_coordinator_gets_the_weighted_mean_and_never_a_site_gradient(dead):
    run_config = flat_run_config(parse_run_config(RUN))
    strategy, params = strategy_and_params(run_config)
    grid = LocalGrid(run_config, dead)
    train = list(strategy.configure_train(1, ArrayRecord(params), ConfigRecord(), grid))
    assert strategy.secure_train(1, grid, train, ArrayRecord(params), timeout=60) is not None
    applied = {k: params[k].double() - strategy.params[k].double() for k in params}  # SGD at rate 1: the mean itself
    survivors = [n for n in NODES if n not in dead]
    expected = plain_mean(run_config, params, survivors)
    for k in params:  # quantization: half a level per site, over the summed weight
        assert torch.allclose(applied[k], expected[k], atol=1e-5), (k, float((applied[k] - expected[k]).abs().max()))

    arrays_received = [(node, kind, reply) for node, kind, reply in grid.seen if reply.content.array_records]
    assert {kind for _, kind, _ in arrays_received} == {"query.secagg_mask"}  # the only arrays a site sent
    for node, _, reply in arrays_received:
        masked = reply.content["masked"]["y"].numpy()
        plain_grads = plain_mean(run_config, params, [node])  # that site's own meta-gradient
        flat = np.concatenate([v.flatten().numpy() for v in plain_grads.values()])
        assert masked.dtype == np.uint64 and len(masked) == len(flat) + 1
        assert abs(np.corrcoef(masked[:-1].astype(np.float64), flat)[0, 1]) < 0.2  # looks like noise, not the gradient
    metric_keys = {k for _, kind, r in grid.seen if kind == "train.secagg" for k in r.content["metrics"]}
    assert "num-tasks" not in metric_keys  # a site's weight stays inside the masked sum


def test_too_many_dropouts_leave_the_model_unchanged():
    run_config = flat_run_config(parse_run_config(RUN))
    strategy, params = strategy_and_params(run_config)
    grid = LocalGrid(run_config, {101: "query.secagg_mask", 202: "query.secagg_mask", 303: "query.secagg_mask"})
    train = list(strategy.configure_train(1, ArrayRecord(params), ConfigRecord(), grid))
    assert strategy.secure_train(1, grid, train, ArrayRecord(params), timeout=60) is None
    assert all(torch.equal(strategy.params[k], params[k]) for k in params)


def test_secure_aggregation_refuses_settings_it_cannot_honour():
    for extra, message in (
        ({"aggregator": "median"}, "robust rules"),
        ({"max-update-norm": 5.0}, "max-update-norm"),
        ({"dp-clip": 1.0, "dp-noise": "server"}, "dp-noise=sites"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_run_config({**RUN, **extra})
    assert 4 * SecureAggregation().levels < secagg.EXACT  # four sites' quantized sums stay exact in float64
