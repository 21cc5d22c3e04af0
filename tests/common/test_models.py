"""Backbones: 2D/3D shapes, no running statistics, clear config errors."""

import pytest
import torch

from common.models import ModelConfig, build_model


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["group", "instance"])
def test_backbone_shapes_and_stateless_norms(dims, norm):
    config = ModelConfig(spatial_dims=dims, in_channels=2, image_size=16, num_classes=4, width=8, depth=3, norm=norm, num_groups=4)
    model = build_model(config)
    x = torch.randn(3, 2, *([16] * dims))
    assert model(x).shape == (3, 4)
    assert model.embed(x).shape == (3, config.feature_size)
    assert not list(model.buffers()), "norm layers must keep no running statistics"
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("body.", "head.")) for n in names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 10, "num_groups": 4}, "not divisible by num_groups"),
        ({"image_size": 8, "depth": 4}, "too small for depth=4"),
        ({"norm": "batch"}, "no running statistics"),
        ({"spatial_dims": 1}, "use 2"),
    ],
)
def test_bad_model_config_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)
