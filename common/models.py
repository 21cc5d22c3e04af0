"""Small 2D/3D backbones for few-shot medical imaging, built from MONAI factories.

Every model is a `MetaNet`: a `body` (feature extractor) and a linear `head`. Parameter names
therefore start with ``body.`` or ``head.``, which is what ANIL and ProtoNet rely on. Norm layers
are group or instance norm and keep no running statistics, so a model is a pure function of its
parameters: it works under `torch.func.vmap` and can be averaged across sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

NORMS = ("group", "instance")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Conv-N backbone: `depth` conv blocks of `width` channels, each halving size."""

    spatial_dims: int = 2
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 5
    width: int = 64
    depth: int = 4
    norm: str = "group"
    num_groups: int = 8

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={self.spatial_dims}: use 2 (images) or 3 (volumes)")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: use one of {NORMS} (no running statistics)")
        if self.norm == "group" and self.width % self.num_groups:
            raise ValueError(
                f"width={self.width} is not divisible by num_groups={self.num_groups}; "
                "pick a width that is a multiple of num_groups"
            )
        if min(self.in_channels, self.num_classes, self.width, self.depth) < 1:
            raise ValueError(f"{self}: channels, classes, width and depth must all be >= 1")
        if self.image_size >> self.depth < 1:
            raise ValueError(
                f"image_size={self.image_size} is too small for depth={self.depth} "
                f"(each block halves it); use depth <= {self.image_size.bit_length() - 1}"
            )

    @property
    def feature_size(self) -> int:
        """Number of features the body produces per example (input to the head)."""
        return self.width * (self.image_size >> self.depth) ** self.spatial_dims


class MetaNet(nn.Module):
    """Conv-N body (conv 3^d, norm, ReLU, max-pool 2) and a linear classification head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        norm: tuple = ("group", {"num_groups": config.num_groups}) if config.norm == "group" else "instance"
        pool = Pool[Pool.MAX, config.spatial_dims]
        blocks: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(config.depth):
            blocks.append(Convolution(config.spatial_dims, channels, config.width, act="RELU", norm=norm))
            blocks.append(pool(kernel_size=2))
            channels = config.width
        blocks.append(nn.Flatten())
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(config.feature_size, config.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_model(config: ModelConfig) -> MetaNet:
    return MetaNet(config)


def init_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's parameters: the meta-parameters an algorithm starts from."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
