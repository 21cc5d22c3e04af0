"""Random label-preserving transforms of training images (`augment` in the run config).

Each image of a training batch gets its own draw of each named transform, from a generator the
caller seeds per (run seed, site, round), apart from the one that drew the episodes: the same
run with and without augmentation trains on the same episodes. Evaluation never augments.

One transform is drawn per task instead: `scanner` passes all of a task's images (support and
query) through one random acquisition shift (`SiteShift.draw`: gain, contrast, gamma, blur,
resolution, noise), so each training task looks as if another scanner had taken it. A new
hospital differs from the training ones by such a shift (the scenarios give each hospital a
fixed one); with `scanner` a meta-learner meets many more of them than there are training
hospitals, and adapts to one from a task's own support set.

The transforms are written as whole-batch tensor operations (a flip is a `torch.where` between
the batch and its flipped copy): MONAI's RandFlip / RandRotate90 / RandAffine draw once per call
and take one image, and a round of a few thousand 28px images through them per image costs more
than the round's training (what these do is their `prob=0.5` flip, 90-degree rotation and a
small translation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data.shift import SiteShift
from common.tasks import TaskBatch, site_generator

STREAM = 7  # the generator stream of a round's augmentation (the episodes are drawn from stream 0)

AUGMENTATIONS = {
    "scanner": "one random acquisition shift (gain, contrast, gamma, blur, resolution, noise) per task",
    "flip": "mirror each spatial axis with probability 1/2",
    "rot90": "rotate by 0, 90, 180 or 270 degrees in the last two axes (square images)",
    "shift": "translate by up to 1/14 of the side (2 px at 28 px) along each axis, edges reflected",
    "intensity": "scale contrast by 0.8 to 1.2 about the image mean and shift brightness by up to 0.1 std",
}


def parse_augment(text: str) -> tuple[str, ...]:
    """`"flip,rot90"` into the transforms, in the order they are applied (AUGMENTATIONS')."""
    names = [n for n in text.replace(" ", "").split(",") if n]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in AUGMENTATIONS.items())
        raise ValueError(f"augment={text!r}: unknown {', '.join(map(repr, unknown))}; choose from {known}")
    return tuple(n for n in AUGMENTATIONS if n in names)


@dataclass(frozen=True)
class Augmenter:
    """A run's training augmentation: `kinds` (from `parse_augment`), drawn per (seed, site, round)."""

    kinds: tuple[str, ...]
    spatial_dims: int
    seed: int

    @classmethod
    def from_text(cls, text: str, spatial_dims: int, seed: int) -> Augmenter:
        return cls(parse_augment(text), spatial_dims, seed)

    def __call__(self, batch: TaskBatch, site: int, server_round: int) -> TaskBatch:
        """`batch`'s support and query images transformed; labels and episodes as they were."""
        if not self.kinds:
            return batch
        generator = site_generator(self.seed, site, server_round, STREAM)
        support, query = batch.support_x, batch.query_x
        if "scanner" in self.kinds:  # the acquisition first, as a scanner comes before any handling
            support, query = scanners(support, query, generator)
        per_image = tuple(k for k in self.kinds if k not in PER_TASK)
        support, query = (augment(x, per_image, self.spatial_dims, generator) for x in (support, query))
        return TaskBatch(support, batch.support_y, query, batch.query_y, batch.classes)


PER_TASK = ("scanner",)  # drawn once per task by `Augmenter`, not per image by `augment`


def scanners(
    support: torch.Tensor, query: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task's support and query images, (T, N, C, *spatial) in [0, 1], through one random
    scanner of its own (`SiteShift.draw`), drawn from `generator`: within a task every image
    meets the same acquisition, as at one hospital; tasks differ."""
    shifted_support, shifted_query = [], []
    for task_support, task_query in zip(support, query):
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        images = torch.cat([task_support, task_query]).cpu()
        shifted = SiteShift.draw(rng)(images, generator).to(support.device)
        shifted_support.append(shifted[: len(task_support)])
        shifted_query.append(shifted[len(task_support) :])
    return torch.stack(shifted_support), torch.stack(shifted_query)


def augment(
    images: torch.Tensor, kinds: tuple[str, ...], spatial_dims: int, generator: torch.Generator
) -> torch.Tensor:
    """`images` (..., C, *spatial) with each image transformed by its own random draw of `kinds`
    (the per-image ones; `scanner` is drawn per task: `Augmenter`, `scanners`)."""
    if not kinds:
        return images
    if set(kinds) & set(PER_TASK):
        raise ValueError(f"augment {', '.join(sorted(set(kinds) & set(PER_TASK)))}: drawn per task, by Augmenter")
    shape = images.shape
    x = images.reshape(-1, *shape[-(spatial_dims + 1) :])  # (B, C, *spatial)
    axes = tuple(range(2, 2 + spatial_dims))
    n = x.shape[0]

    def per_image(values: torch.Tensor) -> torch.Tensor:  # (B,) broadcast over (C, *spatial)
        return values.view(n, *(1,) * (x.dim() - 1)).to(x.device)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    for kind in kinds:
        if kind == "flip":
            for axis in axes:
                x = torch.where(per_image(torch.rand(n, generator=generator) < 0.5), x.flip(axis), x)
        elif kind == "rot90":
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"augment rot90: images of {tuple(x.shape[-2:])} are not square")
            turns, rotated = per_image(torch.randint(0, 4, (n,), generator=generator)), x
            for k in (1, 2, 3):
                rotated = torch.where(turns == k, x.rot90(k, (-2, -1)), rotated)
            x = rotated
        elif kind == "shift":
            x = _shift(x, axes, generator)
        elif kind == "intensity":
            dims = tuple(range(1, x.dim()))
            mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
            x = (x - mean) * per_image(uniform(0.8, 1.2)) + mean + per_image(uniform(-0.1, 0.1)) * std
    return x.reshape(shape)


def _shift(x: torch.Tensor, axes: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Each image translated by its own offset in [-s, s] per axis (s = side // 14, at least 1),
    the border filled by reflection: pad, then take each image's own window."""
    n = x.shape[0]
    margins = [max(1, x.shape[a] // 14) for a in axes]
    pad = [p for a, s in zip(reversed(axes), reversed(margins)) for p in (min(s, x.shape[a] - 1),) * 2]
    padded = torch.nn.functional.pad(x, pad, mode="reflect")
    for axis, margin in zip(axes, margins):
        margin = min(margin, x.shape[axis] - 1)
        size = x.shape[axis]
        start = torch.randint(0, 2 * margin + 1, (n,), generator=generator)
        index = (start.view(-1, 1) + torch.arange(size)).to(x.device)  # (B, size): each image's window
        view = [n] + [1] * (padded.dim() - 1)
        view[axis] = size
        index = index.view(view).expand(*padded.shape[:axis], size, *padded.shape[axis + 1 :])
        padded = padded.gather(axis, index)
    return padded
