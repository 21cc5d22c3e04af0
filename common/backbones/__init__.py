"""Backbones by name (the run config's `model`), one per module, and `build_model`."""

from __future__ import annotations

from collections.abc import Callable

from common.backbones.conv import ConvNet
from common.backbones.resnet import ResNet
from common.models import MetaNet, ModelConfig

BACKBONES: dict[str, Callable[[ModelConfig], MetaNet]] = {"conv": ConvNet, "resnet": ResNet}


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"model={name!r}: choose one of {', '.join(BACKBONES)}")


def build_model(config: ModelConfig) -> MetaNet:
    check_backbone(config.backbone)
    return BACKBONES[config.backbone](config)
