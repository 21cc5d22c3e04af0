"""ANIL and ProtoNet semantics, and reproducibility of tasks and gradients."""

import pytest
import torch

from common.algorithms import build_algorithm
from common.algorithms.protonet import proto_logits, prototypes
from common.config import EpisodeConfig
from common.functional import subset
from common.tasks import EpisodeSampler, site_generator
from tests.common.conftest import labelled_set, meta_config


def test_anil_inner_loop_changes_only_the_head(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, meta_config("anil", execution="loop"))
    meta = algo.init_meta_params()
    episode = tiny_batch[0]
    adapted = algo.adapt(meta, episode.support_x, episode.support_y, steps=3)
    assert adapted.keys() == algo.model_params(meta).keys()
    for k, v in subset(meta, "body.").items():
        assert torch.equal(adapted[k], v), f"ANIL changed body weight {k}"
    assert not torch.equal(adapted["head.weight"], meta["head.weight"])


def test_anil_meta_gradient_reaches_the_body(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, meta_config("anil", execution="loop"))
    grads = algo.meta_gradient(algo.init_meta_params(), tiny_batch).grads
    assert all(g.abs().sum() > 0 for g in subset(grads, "body.").values())


def test_protonet_logits_are_negative_squared_distances():
    g = torch.Generator().manual_seed(0)
    support, queries = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    protos, present = prototypes(support, labels, 3)
    assert present.all()
    expected_protos = torch.stack([support[labels == c].mean(0) for c in range(3)])
    expected = torch.tensor([[-((q - c) ** 2).sum().item() for c in expected_protos] for q in queries])
    torch.testing.assert_close(protos, expected_protos)
    torch.testing.assert_close(proto_logits(queries, protos), expected, rtol=1e-5, atol=1e-5)


def test_protonet_adapted_head_predicts_like_the_prototypes(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, meta_config("protonet"))
    meta = algo.init_meta_params()
    episode = tiny_batch[0]
    adapted = algo.adapt(meta, episode.support_x, episode.support_y)
    head_probs = torch.softmax(algo.predict(adapted, episode.query_x), -1)
    _, proto_scores = algo.task_loss(meta, episode.tensors(), None)
    torch.testing.assert_close(head_probs, torch.softmax(proto_scores, -1).detach())


def test_protonet_gradient_leaves_the_unused_head_at_zero(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, meta_config("protonet", execution="loop"))
    grads = algo.meta_gradient(algo.init_meta_params(), tiny_batch).grads
    assert all(torch.count_nonzero(g) == 0 for g in subset(grads, "head.").values())
    assert any(torch.count_nonzero(g) > 0 for g in subset(grads, "body.").values())


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_same_seed_same_tasks_and_gradients(tiny_model, algorithm):
    images, labels = labelled_set()
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3))
    algo = build_algorithm(tiny_model, meta_config(algorithm))
    meta = algo.init_meta_params()
    a = sampler.sample_batch(4, site_generator(seed=7, site_id=2))
    b = sampler.sample_batch(4, site_generator(seed=7, site_id=2))
    other_site = sampler.sample_batch(4, site_generator(seed=7, site_id=3))
    for x, y in zip(a.tensors(), b.tensors()):
        assert torch.equal(x, y)
    assert not torch.equal(a.support_x, other_site.support_x)
    ga, gb = algo.meta_gradient(meta, a).grads, algo.meta_gradient(meta, b).grads
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "meta-sgd", "anil", "protonet", "fedavg"])
def test_every_algorithm_takes_hospital_tasks_with_global_labels(algorithm):
    """A hospital holds 3 of an 8-class label space (labels 1, 4, 6): losses and meta-gradients
    stay finite, and nothing predicts a class the hospital's support set does not hold."""
    from common.backbones import build_model
    from common.config import MetaConfig
    from common.models import ModelConfig
    from common.tasks import HospitalSampler, site_generator
    from tests.common.conftest import labelled_set

    images, labels = labelled_set(num_classes=3, per_class=10, size=8)
    labels = torch.tensor([1, 4, 6])[labels]
    batch = HospitalSampler(images, labels, shots=2, queries=4).sample_batch(2, site_generator(0))
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=8, num_classes=8, width=4, depth=2, num_groups=2)).double()
    algo = build_algorithm(model, MetaConfig(algorithm, inner_steps=2, inner_lr=0.3, eval_inner_steps=3))
    meta = algo.init_meta_params()
    step = algo.meta_gradient(meta, batch)
    assert all(torch.isfinite(g).all() for g in step.grads.values()) and step.loss == step.loss
    rows = algo.evaluate(meta, batch)
    assert all(torch.isfinite(v).all() for k, v in rows.items() if k != "auc_after")
    if algorithm == "protonet":
        adapted = algo.adapt(meta, batch[0].support_x, batch[0].support_y)
        predicted = algo.predict(adapted, batch[0].query_x).argmax(1)
        assert set(predicted.tolist()) <= {1, 4, 6}


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "meta-sgd", "fedavg"])
def test_a_rate_scale_adapts_at_that_fraction_of_the_inner_rate(tiny_model, tiny_batch, algorithm):
    """with_rate_scale(f) adapts exactly as the same meta-model would at f times its inner rate
    (Meta-SGD: f times each learned rate), and differs from the unscaled adaptation."""
    from dataclasses import replace

    from common.algorithms.metasgd import PREFIX

    algo = build_algorithm(tiny_model, meta_config(algorithm, execution="loop"))
    meta, episode = algo.init_meta_params(), tiny_batch[0]
    scaled = algo.with_rate_scale(0.25).adapt(meta, episode.support_x, episode.support_y, steps=2)
    if algorithm == "meta-sgd":
        meta_slow = {k: 0.25 * v if k.startswith(PREFIX) else v for k, v in meta.items()}
        expected = algo.adapt(meta_slow, episode.support_x, episode.support_y, steps=2)
    else:
        slow = build_algorithm(tiny_model, replace(algo.config, inner_lr=0.25 * algo.config.inner_lr))
        expected = slow.adapt(meta, episode.support_x, episode.support_y, steps=2)
    assert scaled.keys() == expected.keys()
    assert all(torch.equal(scaled[k], expected[k]) for k in scaled)
    unscaled = algo.adapt(meta, episode.support_x, episode.support_y, steps=2)
    assert any(not torch.equal(scaled[k], unscaled[k]) for k in scaled)
    assert algo.with_rate_scale(1.0) is algo and algo.rate_scale == 1.0  # meta-training keeps its rate


def test_a_rate_scale_is_refused_where_it_means_nothing(tiny_model):
    protonet = build_algorithm(tiny_model, meta_config("protonet"))
    assert protonet.with_rate_scale(1.0) is protonet
    with pytest.raises(ValueError, match="protonet adapts without gradient steps"):
        protonet.with_rate_scale(0.5)
    maml = build_algorithm(tiny_model, meta_config("maml"))
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive, finite factor"):
            maml.with_rate_scale(bad)


def test_protonet_trains_on_more_ways_than_it_is_scored_on(tiny_model):
    """train_ways=6 on a model scored 3-way (TINY's head): the 6-way training episodes' loss and
    meta-gradient are those of a ProtoNet whose model has 6 outputs (a 3-way one would leave
    classes 3..5 without a prototype); scoring at 3 ways is unchanged."""
    from dataclasses import replace as with_

    images, labels = labelled_set(num_classes=6)
    six_way = EpisodeSampler(images, labels, EpisodeConfig(ways=6, shots=2, queries=3)).sample_batch(
        2, site_generator(seed=3, site_id=0)
    )
    trained = build_algorithm(tiny_model, meta_config("protonet", execution="loop", train_ways=6))
    assert tiny_model.config.num_classes == 3
    torch.manual_seed(0)
    wide_model = type(tiny_model)(with_(tiny_model.config, num_classes=6)).double()
    wide = build_algorithm(wide_model, meta_config("protonet", execution="loop"))
    meta = trained.init_meta_params()
    step, reference = trained.meta_gradient(meta, six_way), wide.meta_gradient(meta, six_way)
    assert step.loss == pytest.approx(reference.loss) and step.loss < float("inf")
    for key in subset(step.grads, "body."):
        torch.testing.assert_close(step.grads[key], reference.grads[key])
    narrow = build_algorithm(tiny_model, meta_config("protonet", execution="loop"))
    with pytest.raises(IndexError):  # a 3-way ProtoNet has no prototype for labels 3..5
        narrow.meta_gradient(meta, six_way)
    three_way = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3)).sample_batch(
        2, site_generator(seed=3, site_id=1)
    )
    for a, b in zip(trained.evaluate(meta, three_way).values(), narrow.evaluate(meta, three_way).values()):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b))
