"""Partitions are disjoint and complete; patient splits never put one patient on both sides."""

import numpy as np
import pytest
import torch

from common.config import EpisodeConfig
from common.data.partition import dirichlet_proportions, split_by_patient, split_by_proportions, split_by_shares
from common.tasks import EpisodeSampler


def test_shares_are_disjoint_complete_and_proportional():
    parts = split_by_shares(1000, [1, 1, 2], np.random.default_rng(0))
    assert [len(p) for p in parts] == [250, 250, 500]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))


def test_dirichlet_split_is_disjoint_complete_and_skewed():
    labels = np.repeat(np.arange(5), 200)
    rng = np.random.default_rng(0)
    parts = split_by_proportions(labels, dirichlet_proportions(5, 4, 0.1, rng), rng)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    # alpha 0.1: most of each class sits at one site
    top_share = [max((labels[p] == c).sum() for p in parts) / 200 for c in range(5)]
    assert np.mean(top_share) > 0.7
    even = split_by_proportions(labels, dirichlet_proportions(5, 4, 1000.0, rng), rng)
    assert all(abs((labels[p] == c).sum() - 50) < 15 for p in even for c in range(5))


def test_patient_split_keeps_patients_whole():
    groups = torch.arange(40).repeat_interleave(3)[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    train, test = split_by_patient(groups, 0.3, torch.Generator().manual_seed(1))
    assert not set(groups[train].tolist()) & set(groups[test].tolist())
    assert len(train) + len(test) == 120 and 0.25 <= len(test) / 120 <= 0.4


def test_episode_queries_never_share_a_patient_with_the_support():
    labels = torch.arange(2).repeat_interleave(30)
    groups = torch.arange(60) // 3  # 3 images per patient, 10 patients per class
    sampler = EpisodeSampler(torch.randn(60, 1, 4, 4), labels, EpisodeConfig(ways=2, shots=3, queries=4), groups=groups)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        ep = sampler.sample(generator)
        index = {tuple(x.flatten().tolist()): i for i, x in enumerate(sampler.images)}
        patient = lambda xs, index=index: {int(groups[index[tuple(x.flatten().tolist())]]) for x in xs}
        assert not patient(ep.support_x) & patient(ep.query_x)
        assert ep.query_x.shape[0] == 8


def test_too_few_patients_for_an_episode_is_a_clear_error():
    labels = torch.zeros(20, dtype=torch.long).index_fill(0, torch.arange(10, 20), 1)
    groups = torch.tensor([0] * 9 + [1] + list(range(2, 12)))  # class 0: patient 0 has 9 of 10 images
    with pytest.raises(
        ValueError, match=r"class 0: 10 examples from 2 patients; .* only 0 examples of other patients remain"
    ):
        EpisodeSampler(torch.randn(20, 1, 4, 4), labels, EpisodeConfig(ways=2, shots=2, queries=3), groups=groups)
