"""A small residual network: `depth` stages, each a MONAI `ResidualUnit` (two 3^d convolutions
with norm and ReLU, plus the input, projected by a 1^d convolution where the channel count
changes) followed by 2^d max-pooling, then a linear head. Deeper features than Conv-N at the
same width, with skip connections that keep second-order gradients well scaled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.models import MetaNet, ModelConfig, Params
from common.native.build import NativeKernels

SUBUNITS = 2  # convolutions per residual unit


class ResNet(MetaNet):
    def __init__(self, config: ModelConfig) -> None:
        from monai.networks.blocks import ResidualUnit
        from monai.networks.layers.factories import Pool  # MONAI loads here, not on import (3.4 s; docs/DEVELOPING.md)

        pool = Pool[Pool.MAX, config.spatial_dims]
        blocks: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(config.depth):
            blocks.append(
                ResidualUnit(
                    config.spatial_dims, channels, config.width, subunits=SUBUNITS, act="RELU", norm=config.norm_layer
                )
            )
            blocks.append(pool(kernel_size=2))
            channels = config.width
        blocks.append(nn.Flatten())
        super().__init__(config, nn.Sequential(*blocks))
        self._conv = F.conv2d if config.spatial_dims == 2 else F.conv3d
        self._pool = F.max_pool2d if config.spatial_dims == 2 else F.max_pool3d

    def features(
        self,
        params: Params,
        inp: torch.Tensor,
        kernels: NativeKernels | None = None,  # noqa: ARG002 -- Backbone's signature; no fused kernels here
    ) -> torch.Tensor:
        """Every stage on PyTorch's operators (the fused C op is Conv-N's norm-pool-ReLU order)."""
        cfg = self.config
        groups = cfg.num_groups if cfg.norm == "group" else cfg.width
        h = inp
        for stage in range(cfg.depth):
            prefix = f"body.{2 * stage}."
            skip = h
            for unit in range(SUBUNITS):
                name = f"{prefix}conv.unit{unit}."
                h = self._conv(h, params[name + "conv.weight"], params[name + "conv.bias"], padding=1)
                if cfg.norm == "group":
                    h = F.group_norm(h, groups, params[name + "adn.N.weight"], params[name + "adn.N.bias"])
                else:
                    h = F.instance_norm(h)
                h = F.relu(h)
            if prefix + "residual.weight" in params:  # channels change: a 1^d projection of the input
                skip = self._conv(skip, params[prefix + "residual.weight"], params[prefix + "residual.bias"])
            h = self._pool(h + skip, 2)
        return h.flatten(1)
