"""From what a file holds to what the model takes: channel handling and resizing, via MONAI."""

from __future__ import annotations

from typing import Any

import torch

# ITU-R BT.601 luma weights: the usual grey value of an RGB image
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def match_channels(images: torch.Tensor, channels: int, where: str = "images") -> torch.Tensor:
    """(M, C, *S) -> (M, channels, *S): RGB(A) to grey by luma, grey to RGB by repetition."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1 and have in (3, 4):
        weights = _LUMA.to(images).reshape(1, 3, *([1] * (images.dim() - 2)))
        return (images[:, :3] * weights).sum(1, keepdim=True)
    if channels == 3 and have == 1:
        return images.expand(-1, 3, *images.shape[2:]).contiguous()
    raise ValueError(
        f"{where} have {have} channels but the model takes {channels}; "
        "use 1 (grey) or 3 (RGB) channels, or set the model's channels to match"
    )


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(M, C, *S) -> (M, C, size, ..., size) with MONAI's area (down) / bilinear (up) resize."""
    target = (size,) * (images.dim() - 2)
    if tuple(images.shape[2:]) == target:
        return images
    mode = "area" if min(images.shape[2:]) >= size else ("bilinear" if images.dim() == 4 else "trilinear")
    kwargs: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
    from monai.transforms import Resize  # MONAI loads here, not on import (3.4 s; docs/DEVELOPING.md)

    transform = Resize(spatial_size=target, mode=mode, anti_aliasing=False, **kwargs)
    # MONAI resizes each channel alike: fold the batch into channels for one call
    folded = torch.as_tensor(transform(images.reshape(-1, *images.shape[2:])))
    return folded.reshape(*images.shape[:2], *target)


def to_model_input(images: torch.Tensor, channels: int, size: int, where: str = "images") -> torch.Tensor:
    """Float32 images with the model's channel count and spatial size."""
    return resize(match_channels(images.float(), channels, where), size).contiguous()
