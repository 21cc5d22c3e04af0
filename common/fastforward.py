"""A cheaper program for the same function as a `MetaNet`, for inner loops that call it often.

`functional_call(model, params, x)` and `FastForward(model)(params, prepare(x))` return the same
values (tested); the second is rearranged for second-order MAML, where every inner step runs a
forward, a backward, and later the backward of that backward:

- the first convolution is a matrix product with the input's 3x3 patches, cut once per task
  (a task's support images do not change across inner steps). With one input channel the
  library convolution is a poor fit (its forward, weight gradient and their derivatives were a
  third of a Conv-4 meta-batch on CPU); a product of a (width x 9) matrix with patches is not;
- ReLU is applied after max-pooling instead of before. Both are monotone, so
  relu(maxpool(x)) == maxpool(relu(x)), on a quarter of the elements;
- on CPU tensors, norm, max-pool and ReLU run as one C function with closed-form derivatives
  (common/native/), unless `kernels` is None.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.functional import Params
from common.models import MetaNet
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


class FastForward:
    """`kernels`: the fused C function for each block's norm, max-pool and ReLU on CPU tensors
    (None: PyTorch's operators). It cannot run under `torch.func` transforms, so the `vmap` path
    uses a FastForward without."""

    def __init__(self, model: MetaNet, kernels: NativeKernels | None = None) -> None:
        self.config = model.config
        self.kernels = kernels
        self._pool = F.max_pool2d if self.config.spatial_dims == 2 else F.max_pool3d

    def without_kernels(self) -> FastForward:
        twin = copy.copy(self)
        twin.kernels = None
        return twin

    def _native(self, h: torch.Tensor) -> bool:
        return self.kernels is not None and native.supported(h)

    def _block_tail(self, h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """norm, then max-pool, then ReLU (the same function as the module's norm, ReLU, pool)."""
        cfg = self.config
        groups = cfg.num_groups if cfg.norm == "group" else cfg.width
        if self._native(h):
            return native.norm_pool_relu(self.kernels, h, groups, weight, bias)
        h = F.group_norm(h, groups, weight, bias) if cfg.norm == "group" else F.instance_norm(h)
        return F.relu(self._pool(h, 2))

    def prepare(self, x: torch.Tensor) -> Prepared:
        # a plain tensor: site images may arrive as MONAI MetaTensors, whose metadata tracking
        # (on every op) a forward pass does not need and the C kernels cannot take
        x = x.as_subclass(torch.Tensor)
        return Prepared(x=x, patches=patches(x))

    def embed(self, params: Params, inp: Prepared) -> torch.Tensor:
        cfg = self.config
        x = inp.x
        # batched product with the weight broadcast over the batch: the output lands in (B, C, S)
        # order with no transposed copies, and the bias rides along in the same kernel
        weight = params["body.0.conv.weight"].reshape(1, cfg.width, -1).expand(x.shape[0], -1, -1)
        bias = params["body.0.conv.bias"].reshape(1, cfg.width, 1)
        h = torch.baddbmm(bias, weight, inp.patches).reshape(x.shape[0], cfg.width, *x.shape[2:])
        conv = F.conv2d if cfg.spatial_dims == 2 else F.conv3d
        for block in range(cfg.depth):
            prefix = f"body.{2 * block}."
            if block:
                h = conv(h, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
            affine = cfg.norm == "group"
            h = self._block_tail(h, params.get(prefix + "adn.N.weight") if affine else None, params.get(prefix + "adn.N.bias") if affine else None)
        return h.flatten(1)

    def __call__(self, params: Params, inp: Prepared) -> torch.Tensor:
        return F.linear(self.embed(params, inp), params["head.weight"], params["head.bias"])
