"""Backbones by name (the run config's `model`), one per module."""

from __future__ import annotations

from common.backbones.conv import ConvNet
from common.backbones.resnet import ResNet

BACKBONES = {"conv": ConvNet, "resnet": ResNet}
