"""Conv-N (Vinyals et al. 2016; the MAML paper's backbone): `depth` blocks of 3^d convolution,
norm, ReLU and 2^d max-pooling, then a linear head.

The function is rearranged for second-order MAML, where every inner step runs a forward, a
backward, and later the backward of that backward:

- the first convolution is a matrix product with the input's 3^d patches, cut once per task by
  `prepare` (a task's support images do not change across inner steps). With one input channel
  the library convolution is a poor fit (its forward, weight gradient and their derivatives were
  a third of a Conv-4 meta-batch on CPU); a product of a (width x 9) matrix with patches is not;
- ReLU is applied after max-pooling instead of before. Both are monotone, so
  relu(maxpool(x)) == maxpool(relu(x)), on a quarter of the elements;
- on CPU tensors, norm, max-pool and ReLU run as one C function with closed-form derivatives
  (common/native/) when `kernels` are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.models import MetaNet, ModelConfig, Params
from common.native import ops as native
from common.native.build import NativeKernels


@dataclass(frozen=True)
class Prepared:
    """An input batch and its first-layer patches (B, C * 3^d, prod(spatial))."""

    x: torch.Tensor
    patches: torch.Tensor


def patches(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """(B, C, *S) -> (B, C * k^d, prod(S)) zero-padded 'same' patches, the layout of F.unfold."""
    dims = x.dim() - 2
    pad = kernel // 2
    windows = F.pad(x, (pad, pad) * dims)
    for axis in range(2, 2 + dims):
        windows = windows.unfold(axis, kernel, 1)
    # (B, C, *S, *k) -> (B, C, *k, *S) -> (B, C * k^d, prod(S))
    order = [0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims)]
    return windows.permute(order).reshape(x.shape[0], x.shape[1] * kernel**dims, -1)


class ConvNet(MetaNet):
    def __init__(self, config: ModelConfig) -> None:
        from monai.networks.blocks import Convolution
        from monai.networks.layers.factories import Pool  # MONAI loads here, not on import (3.4 s; docs/DEVELOPING.md)

        pool = Pool[Pool.MAX, config.spatial_dims]
        blocks: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(config.depth):
            blocks.append(Convolution(config.spatial_dims, channels, config.width, act="RELU", norm=config.norm_layer))
            blocks.append(pool(kernel_size=2))
            channels = config.width
        blocks.append(nn.Flatten())
        super().__init__(config, nn.Sequential(*blocks))
        self._pool = F.max_pool2d if config.spatial_dims == 2 else F.max_pool3d

    def prepare(self, x: torch.Tensor) -> Prepared:
        x = super().prepare(x)
        return Prepared(x=x, patches=patches(x))

    def features(self, params: Params, inp: Prepared, kernels: NativeKernels | None = None) -> torch.Tensor:
        cfg = self.config
        x = inp.x
        # batched product with the weight broadcast over the batch: the output lands in (B, C, S)
        # order with no transposed copies, and the bias rides along in the same kernel
        weight = params["body.0.conv.weight"].reshape(1, cfg.width, -1).expand(x.shape[0], -1, -1)
        bias = params["body.0.conv.bias"].reshape(1, cfg.width, 1)
        h = torch.baddbmm(bias, weight, inp.patches).reshape(x.shape[0], cfg.width, *x.shape[2:])
        conv = F.conv2d if cfg.spatial_dims == 2 else F.conv3d
        affine = cfg.norm == "group"
        for block in range(cfg.depth):
            prefix = f"body.{2 * block}."  # a block and its pooling layer are two entries of `body`
            if block:
                h = conv(h, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
            h = self._block_tail(
                h,
                params.get(prefix + "adn.N.weight") if affine else None,
                params.get(prefix + "adn.N.bias") if affine else None,
                kernels,
            )
        return h.flatten(1)

    def _block_tail(
        self, h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, kernels: NativeKernels | None
    ) -> torch.Tensor:
        """norm, then max-pool, then ReLU (the same function as MONAI's norm, ReLU, pool)."""
        cfg = self.config
        groups = cfg.num_groups if cfg.norm == "group" else cfg.width
        if kernels is not None and native.supported(h):
            return native.norm_pool_relu(kernels, h, groups, weight, bias)
        h = F.group_norm(h, groups, weight, bias) if cfg.norm == "group" else F.instance_norm(h)
        return F.relu(self._pool(h, 2))
