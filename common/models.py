"""Backbones for few-shot medical imaging: the interface every backbone implements, its config,
and the registry that builds one by name (`model = "conv" | "resnet"` in the run config).

A backbone is ONE pure function of (parameters, input): `features(params, inp, kernels)`, the
body's output, followed by the linear head (`logits`). The `nn.Module` holds the parameters
(created and initialized by MONAI blocks, under `body.` and `head.`) and its `forward` calls that
same function with them, so there is no second forward to keep in sync. What makes the function
cheap to differentiate twice (a first convolution as a patch product, ReLU after pooling, the
fused C op) lives inside it; `prepare` computes once per task what does not change across inner
steps (e.g. the first layer's patches of the support images).

`reference()` is the module that MONAI's own blocks compute when run in order: the tests check
every backbone's function against it, and the benchmark's baselines (higher, plain autograd)
differentiate through it. Norm layers are group or instance norm with no running statistics, so
a model is a pure function of its parameters: it works under `torch.func.vmap` and can be
averaged across sites. Parameter names start with ``body.`` or ``head.``, which is what ANIL and
ProtoNet rely on.

Adding a backbone: one file in `common/backbones/` with a `MetaNet` subclass that builds its
parameters from MONAI blocks and defines `features` (and `prepare` if it caches anything), and
its name in `common/backbones/__init__.py` (`build_model` finds it there). Nothing else changes.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.native.build import NativeKernels

NORMS = ("group", "instance")
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelConfig:
    """A backbone's shape: `depth` stages of `width` channels, each halving the spatial size.
    `backbone` names the architecture (`common/backbones/`, which checks the name)."""

    spatial_dims: int = 2
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 5
    width: int = 64
    depth: int = 4
    norm: str = "group"
    num_groups: int = 8
    backbone: str = "conv"

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

    @property
    def norm_layer(self) -> tuple[str, dict[str, Any]] | str:
        """MONAI's norm factory argument for this config."""
        return ("group", {"num_groups": self.num_groups}) if self.norm == "group" else "instance"


class MetaNet(nn.Module):
    """A backbone: `body` (MONAI blocks holding the feature extractor's parameters), a linear
    `head`, and the pure function they compute."""

    def __init__(self, config: ModelConfig, body: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.body = body
        self.head = nn.Linear(config.feature_size, config.num_classes)

    def prepare(self, x: torch.Tensor) -> Any:
        """What `features` takes for the input batch `x`, computed once per batch. A plain tensor:
        site images may arrive as MONAI MetaTensors, whose metadata tracking a forward pass does
        not need and the C kernels cannot take."""
        return x.as_subclass(torch.Tensor)

    @abstractmethod
    def features(self, params: Params, inp: Any, kernels: NativeKernels | None = None) -> torch.Tensor:
        """The body's output (B, feature_size) for prepared input `inp`, with `params` (names as
        in `named_parameters()`; head entries ignored). `kernels`: the C ops for CPU tensors, or
        None for PyTorch's (always None under `torch.func` transforms)."""

    def logits(self, params: Params, inp: Any, kernels: NativeKernels | None = None) -> torch.Tensor:
        return F.linear(self.features(params, inp, kernels), params["head.weight"], params["head.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self._own(), self.prepare(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self._own(), self.prepare(x))

    def _own(self) -> Params:
        # attribute access, not a copy: under torch.func.functional_call these are the swapped-in tensors
        return dict(self.named_parameters())

    def reference(self) -> nn.Module:
        """MONAI's blocks in order (`body` then `head`, sharing this model's parameters and their
        names): the same function computed the library's way."""
        return nn.Sequential(OrderedDict(body=self.body, head=self.head))


def init_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's parameters: the meta-parameters an algorithm starts from."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
