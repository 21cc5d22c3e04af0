"""The FedAvg baseline: its update is `global - local` after one SGD step per task, so an SGD
server step at rate 1 on the task-weighted average is exactly FedAvg's weighted model average."""

import torch
from torch.func import functional_call

from common.algorithms import build_algorithm
from common.config import EpisodeConfig, MetaConfig
from common.tasks import EpisodeSampler, site_generator
from tests.common.conftest import labelled_set


def local_sgd(model, params, batch, lr):
    local = {k: v.clone() for k, v in params.items()}
    for ep in batch:
        x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
        leaves = {k: v.requires_grad_() for k, v in local.items()}
        loss = torch.nn.functional.cross_entropy(functional_call(model, leaves, (x,)), y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        local = {k: (v - lr * g).detach() for (k, v), g in zip(leaves.items(), grads)}
    return local


def test_update_is_global_minus_local_sgd(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, MetaConfig(algorithm="fedavg", local_lr=0.1))
    meta = algo.init_meta_params()
    step = algo.meta_gradient(meta, tiny_batch)
    expected = local_sgd(tiny_model, meta, tiny_batch, 0.1)
    for k in meta:
        torch.testing.assert_close(meta[k] - step.grads[k], expected[k])
    assert step.num_tasks == len(tiny_batch)


def test_rate_one_sgd_on_weighted_updates_is_the_weighted_model_average(tiny_model):
    algo = build_algorithm(tiny_model, MetaConfig(algorithm="fedavg", local_lr=0.1))
    meta = algo.init_meta_params()
    images, labels = labelled_set()
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3))
    batches = [sampler.sample_batch(n, site_generator(0, site)) for site, n in ((0, 2), (1, 4))]
    steps = [algo.meta_gradient(meta, b) for b in batches]
    weights = [s.num_tasks / 6 for s in steps]
    averaged = {k: sum(w * s.grads[k] for w, s in zip(weights, steps)) for k in meta}
    locals_ = [local_sgd(tiny_model, meta, b, 0.1) for b in batches]
    for k in meta:
        torch.testing.assert_close(meta[k] - 1.0 * averaged[k], sum(w * m[k] for w, m in zip(weights, locals_)))
