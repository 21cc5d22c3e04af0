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


def _saved(tmp_path, model, algorithm="fedavg"):
    from common.config import EpisodeConfig
    from common.export import save_meta_model

    algo = build_algorithm(model, meta_config(algorithm))
    params = {k: v + 1.0 for k, v in algo.init_meta_params().items()}  # anything but the fresh initialization
    return save_meta_model(tmp_path / "supervised", params, model.config, algo.config, EpisodeConfig(ways=3)), params


def test_a_warm_start_takes_every_weight_that_fits(tmp_path, tiny_model):
    from common.export import warm_start

    model_dir, saved = _saved(tmp_path, tiny_model)
    init = build_algorithm(tiny_model, meta_config("meta-sgd")).init_meta_params()
    start, kept = warm_start(init, model_dir)
    assert set(kept) == {k for k in init if k.startswith("inner_lr.")}  # Meta-SGD's rates keep their own start
    assert all(torch.equal(start[k], saved[k].to(start[k].dtype)) for k in saved)


def test_a_warm_start_from_another_architecture_is_refused(tmp_path, tiny_model):
    from dataclasses import replace

    from common.backbones import build_model
    from common.export import warm_start

    model_dir, _ = _saved(tmp_path, tiny_model)
    wider = build_model(replace(tiny_model.config, width=tiny_model.config.width * 2))
    with pytest.raises(ValueError, match="its body does not fit"):
        warm_start(build_algorithm(wider, meta_config("maml")).init_meta_params(), model_dir)


def test_a_head_of_another_size_keeps_its_own_start(tmp_path, tiny_model):
    from dataclasses import replace

    from common.backbones import build_model
    from common.export import warm_start

    model_dir, saved = _saved(tmp_path, tiny_model)
    five_way = build_model(replace(tiny_model.config, num_classes=5)).double()
    init = build_algorithm(five_way, meta_config("maml")).init_meta_params()
    start, kept = warm_start(init, model_dir)
    assert kept == ["head.weight", "head.bias"] and torch.equal(start["head.bias"], init["head.bias"])
    assert all(torch.equal(start[k], saved[k].to(start[k].dtype)) for k in saved if k.startswith("body."))
