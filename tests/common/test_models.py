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


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernels", ["torch", "native"])
def test_fast_forward_computes_the_modules_function(dims, norm, channels, kernels):
    from torch.func import functional_call

    from common.algorithms.base import resolve_kernels
    from common.fastforward import FastForward
    from common.models import init_params

    torch.manual_seed(0)
    config = ModelConfig(spatial_dims=dims, in_channels=channels, image_size=8, num_classes=3, width=8, depth=2, norm=norm, num_groups=4)
    model = build_model(config).double()
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in init_params(model).items()}
    x = torch.randn(5, channels, *([8] * dims), dtype=torch.float64)
    fast = FastForward(model, resolve_kernels(kernels))
    assert (fast.kernels is None) == (kernels == "torch")
    torch.testing.assert_close(fast(params, fast.prepare(x)), functional_call(model, params, (x,)), rtol=1e-12, atol=1e-12)
