"""The episodic sampler: shapes, relabelling, disjoint support/query, clear errors."""

import pytest
import torch

from common.config import EpisodeConfig
from common.tasks import EpisodeSampler, site_generator
from tests.common.conftest import labelled_set


def test_episode_shapes_and_relabelling():
    images, labels = labelled_set(num_classes=6, per_class=8)
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=4, shots=3, queries=2))
    ep = sampler.sample(site_generator(0))
    assert ep.support_x.shape == (12, 1, 4, 4) and ep.query_x.shape == (8, 1, 4, 4)
    assert ep.support_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert sorted(set(ep.query_y.tolist())) == [0, 1, 2, 3]
    assert len(set(ep.classes.tolist())) == 4
    # every support image of episode label i comes from dataset class classes[i]
    for i, c in enumerate(ep.classes.tolist()):
        pool = images[labels == c]
        for x in ep.support_x[ep.support_y == i]:
            assert any(torch.equal(x, p) for p in pool)


def test_support_and_query_never_share_an_example():
    images, labels = labelled_set(num_classes=3, per_class=5)
    images = torch.arange(len(labels), dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3))
    for _ in range(20):
        ep = sampler.sample(site_generator(1))
        ids_s, ids_q = set(ep.support_x[:, 0, 0, 0].tolist()), set(ep.query_x[:, 0, 0, 0].tolist())
        assert not ids_s & ids_q


def test_volumes_are_supported():
    volumes = torch.randn(30, 1, 4, 4, 4)
    sampler = EpisodeSampler(volumes, torch.arange(3).repeat(10), EpisodeConfig(ways=2, shots=1, queries=2))
    assert sampler.sample(site_generator(0)).support_x.shape == (2, 1, 4, 4, 4)


def test_too_small_class_names_the_class_and_the_need():
    images, labels = labelled_set(num_classes=4, per_class=8)
    keep = ~((labels == 2) & (torch.arange(len(labels)) % 8 >= 3))  # class 2 keeps 3 examples
    with pytest.raises(ValueError, match=r"5\+15 = 20 examples, but class 0: 8.*class 2: 3"):
        EpisodeSampler(images[keep], labels[keep], EpisodeConfig(ways=2, shots=5, queries=15))


@pytest.mark.parametrize(
    ("images", "labels", "config", "message"),
    [
        (torch.randn(10, 4, 4), torch.zeros(10), EpisodeConfig(2, 1, 1), "unsqueeze"),
        (torch.randn(10, 1, 4, 4), torch.zeros(9), EpisodeConfig(2, 1, 1), "10 images but 9 labels"),
        (torch.randn(10, 1, 4, 4), torch.arange(2).repeat(5), EpisodeConfig(3, 1, 1), "3-way episodes need 3 classes"),
    ],
)
def test_bad_input_raises_a_clear_error(images, labels, config, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(images, labels, config)


def test_unknown_class_subset_is_reported():
    images, labels = labelled_set(num_classes=3, per_class=8)
    with pytest.raises(ValueError, match=r"classes \[7\] have no examples"):
        EpisodeSampler(images, labels, EpisodeConfig(2, 1, 1), classes=[0, 7])


def test_a_hospital_task_is_every_class_the_site_has_with_global_labels():
    from common.tasks import HospitalSampler

    # classes 2, 5 and 7 of an 8-class label space; class 7 has 7 examples: 2 shots leave 5 queries
    labels = torch.tensor([2] * 30 + [5] * 20 + [7] * 7 + [1] * 2)  # class 1: too few for 2 shots + 1 query
    images = torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    sampler = HospitalSampler(images, labels, shots=2, queries=10)
    assert sampler.classes.tolist() == [2, 5, 7] and sampler.queries == {2: 10, 5: 10, 7: 5}
    batch = sampler.sample_batch(3, site_generator(0, 1))
    assert batch.support_y[0].tolist() == [2, 2, 5, 5, 7, 7]
    assert batch.query_y.shape == (3, 25) and torch.bincount(batch.query_y[0]).tolist() == [0, 0, 10, 0, 0, 10, 0, 5]
    for episode in batch:  # queries never repeat a support image, and carry their true global label
        support, query = episode.support_x[:, 0, 0, 0].long(), episode.query_x[:, 0, 0, 0].long()
        assert not set(support.tolist()) & set(query.tolist())
        assert torch.equal(labels[query], episode.query_y) and torch.equal(labels[support], episode.support_y)


def test_a_hospital_task_keeps_each_patient_on_one_side_and_refuses_too_few_classes():
    from common.tasks import HospitalSampler

    labels = torch.tensor([0] * 8 + [1] * 8)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7])
    images = torch.arange(16, dtype=torch.float32).reshape(-1, 1, 1, 1)
    sampler = HospitalSampler(images, labels, shots=2, queries=10, groups=groups)
    assert sampler.queries == {0: 4, 1: 4}  # worst case: 2 shots from 2 patients leave 2 patients' 4 images
    for episode in sampler.sample_batch(5, site_generator(3)):
        support, query = episode.support_x.flatten().long(), episode.query_x.flatten().long()
        assert not set(groups[support].tolist()) & set(groups[query].tolist())
    with pytest.raises(ValueError, match=r"clinic: a hospital task needs 2 classes with at least shots \+ 1 = 9"):
        HospitalSampler(images, labels, shots=8, queries=10, where="clinic")
    # 8 images of 4 patients: 3 shots can take 3 patients' 6 images, which leaves 2 to query; 4 leave none
    assert HospitalSampler(images, labels, shots=3, queries=10, groups=groups).queries == {0: 2, 1: 2}
    with pytest.raises(ValueError, match=r"their patients' other images .* patients per class: \{0: 4, 1: 4\}"):
        HospitalSampler(images, labels, shots=4, queries=10, groups=groups, where="clinic")
