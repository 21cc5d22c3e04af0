"""The training recipe's knobs: the outer learning-rate schedule and the first-order warm start."""

import itertools
import math

import pytest
import torch

from common.algorithms import build_algorithm
from common.runconfig import TrainConfig, parse_run_config
from server.optimizer import OuterOptimizer
from tests.common.conftest import meta_config


def test_warm_up_then_cosine_to_one_percent():
    cfg = TrainConfig(num_server_rounds=13, outer_lr_schedule="cosine", outer_lr_warmup=2)
    factors = [cfg.outer_lr_factor(r) for r in range(1, 14)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warm-up, then the full rate
    assert factors[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))  # decreasing after the warm-up
    assert factors[7] == pytest.approx(0.505)  # round 8, half-way through the decay: half-way to 0.01


def test_constant_is_constant_and_bad_names_are_refused():
    assert {TrainConfig(num_server_rounds=5).outer_lr_factor(r) for r in range(1, 6)} == {1.0}
    with pytest.raises(ValueError, match="outer-lr-schedule='step'"):
        parse_run_config({"outer-lr-schedule": "step"})


def test_the_optimizer_steps_at_the_scheduled_rate():
    start = {"w": torch.zeros(3)}
    grads = {"w": torch.ones(3)}
    half = OuterOptimizer(start, "sgd", lr=0.1).step(grads, lr_factor=0.5)
    assert torch.allclose(half["w"], torch.full((3,), -0.05))
    optimizer = OuterOptimizer(start, "sgd", lr=0.1)
    optimizer.step(grads, lr_factor=0.5)
    assert torch.allclose(optimizer.step(grads)["w"], torch.full((3,), -0.15))  # back to the full rate


@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd", "anil"])
def test_first_order_warm_start_then_second_order(tiny_model, tiny_batch, algorithm):
    second = build_algorithm(tiny_model, meta_config(algorithm, first_order_rounds=2))
    meta = second.init_meta_params()
    warm = second.for_round(2).meta_gradient(meta, tiny_batch).grads
    fomaml = build_algorithm(tiny_model, meta_config("fomaml")).meta_gradient(meta, tiny_batch).grads
    full = second.for_round(3).meta_gradient(meta, tiny_batch).grads
    assert second.for_round(3) is second and not second.first_order  # the twin is a copy
    if algorithm == "maml":  # MAML's first-order twin is FOMAML
        assert all(torch.allclose(warm[k], fomaml[k]) for k in fomaml)
    # the warm-start rounds drop the second-order terms; later rounds keep them
    assert max((warm[k] - full[k]).abs().max().item() for k in full) > 1e-6
    assert all(math.isfinite(v.sum().item()) for v in warm.values())


def test_protonet_has_no_second_order_to_drop(tiny_model):
    protonet = build_algorithm(tiny_model, meta_config("protonet", first_order_rounds=5))
    assert protonet.for_round(1) is protonet
