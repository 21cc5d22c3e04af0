"""Built-in synthetic sites: deterministic per (seed, site), sites differ, classes are balanced."""

import pytest
import torch

from common.config import EpisodeConfig
from common.data.synthetic import site_shift, synthetic_site
from common.tasks import EpisodeSampler


def test_same_seed_and_site_give_the_same_images():
    a = synthetic_site(3, seed=1, num_classes=4, per_class=5)
    b = synthetic_site(3, seed=1, num_classes=4, per_class=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.ids == b.ids
    assert a.images.shape == (20, 1, 28, 28) and torch.bincount(a.labels).tolist() == [5, 5, 5, 5]


def test_sites_differ_in_images_and_scanner():
    a = synthetic_site(0, num_classes=4, per_class=5)
    b = synthetic_site(1, num_classes=4, per_class=5)
    assert not torch.allclose(a.images, b.images)
    assert site_shift(0, 0) != site_shift(0, 1)


def test_train_and_test_images_are_different_draws():
    train = synthetic_site(2, num_classes=3, per_class=4, split="train")
    test = synthetic_site(2, num_classes=3, per_class=4, split="test")
    assert not set(train.ids) & set(test.ids)
    assert not torch.allclose(train.images, test.images)


def test_classes_are_learnable_by_a_nearest_mean_rule():
    """The class concept (object count x size) must be visible even through a site's scanner:
    nearest class mean on one crude feature, the image's mean intensity, is far above chance."""
    data = synthetic_site(0, num_classes=5, per_class=30)
    sampler = EpisodeSampler.from_data(data, EpisodeConfig(ways=5, shots=10, queries=20))
    accuracy = []
    for seed in range(5):
        episode = sampler.sample(torch.Generator().manual_seed(seed))
        feature = episode.support_x.flatten(1).mean(1)
        means = torch.stack([feature[episode.support_y == c].mean() for c in range(5)])
        pred = (episode.query_x.flatten(1).mean(1, keepdim=True) - means).abs().argmin(1)
        accuracy.append((pred == episode.query_y).float().mean())
    assert torch.stack(accuracy).mean() > 0.4  # chance is 0.2


def test_too_many_classes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"1..10 classes"):
        synthetic_site(0, num_classes=11)
