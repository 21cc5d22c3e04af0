"""Backbones: 2D/3D shapes, no running statistics, clear config errors."""

import pytest
import torch

from common.backbones import BACKBONES, build_model
from common.models import ModelConfig


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_shapes_and_stateless_norms(dims, norm, backbone):
    config = ModelConfig(
        spatial_dims=dims,
        in_channels=2,
        image_size=16,
        num_classes=4,
        width=8,
        depth=3,
        norm=norm,
        num_groups=4,
        backbone=backbone,
    )
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


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernels", ["torch", "native"])
def test_each_backbone_is_the_function_of_its_monai_blocks(backbone, dims, norm, channels, kernels):
    """The one forward (the module's, with or without the C kernels) against MONAI's blocks run
    in order: a backbone whose function drifted from its parameters' layers fails here."""
    from torch.func import functional_call

    from common.models import init_params
    from common.native import resolve_kernels

    torch.manual_seed(0)
    config = ModelConfig(
        spatial_dims=dims,
        in_channels=channels,
        image_size=8,
        num_classes=3,
        width=8,
        depth=2,
        norm=norm,
        num_groups=4,
        backbone=backbone,
    )
    model = build_model(config).double()
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in init_params(model).items()}
    x = torch.randn(5, channels, *([8] * dims), dtype=torch.float64)
    expected = functional_call(model.reference(), params, (x,))
    torch.testing.assert_close(functional_call(model, params, (x,)), expected, rtol=1e-12, atol=1e-12)
    logits = model.logits(params, model.prepare(x), resolve_kernels(kernels))
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_builds_from_the_run_config(backbone):
    from common.runconfig import parse_run_config

    cfg = parse_run_config({"model": backbone, "model-width": 8, "model-groups": 4, "model-depth": 2})
    model = build_model(cfg.model)
    assert type(model) is BACKBONES[backbone] and model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="model='vit': choose one of"):
        parse_run_config({"model": "vit"})
