from dataclasses import replace

import pytest
import torch

from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.models import ModelConfig
from common.tasks import EpisodeSampler, site_generator

TINY = ModelConfig(in_channels=1, image_size=4, num_classes=3, width=4, depth=1, num_groups=2)


def labelled_set(num_classes: int = 6, per_class: int = 8, size: int = 4, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    # a learnable signal: class-dependent mean plus noise
    images = (
        torch.randn(len(labels), 1, size, size, generator=g, dtype=dtype) + labels.view(-1, 1, 1, 1).to(dtype) * 0.3
    )
    return images, labels


@pytest.fixture(params=["conv", "resnet"])
def tiny_model(request):
    """Every backbone: each algorithm and execution path must work with it unchanged."""
    torch.manual_seed(0)
    return build_model(replace(TINY, backbone=request.param)).double()


@pytest.fixture
def tiny_batch():
    images, labels = labelled_set()
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3))
    return sampler.sample_batch(3, site_generator(seed=1, site_id=0))


def meta_config(algorithm: str, **kw) -> MetaConfig:
    return MetaConfig(algorithm=algorithm, inner_steps=kw.pop("inner_steps", 2), inner_lr=kw.pop("inner_lr", 0.3), **kw)
