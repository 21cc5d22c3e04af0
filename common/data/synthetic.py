"""Offline site data from MONAI's synthetic image helper: learnable classes, per-site scanner shift.

A class is a (number of objects, object size) pair drawn with `monai.data.synthetic`, a concept
a small CNN can learn from a few examples. Each site sees its classes through its own scanner
(`SiteShift`: intensity, contrast, gamma, blur, resolution, noise), drawn from (seed, site)
unless given, so sites differ the way scanners do. The same arguments return the same images.
"""

from __future__ import annotations

import numpy as np
import torch

from common.data.dataset import LabelledImages
from common.data.shift import SiteShift
from common.tasks import site_seed

COUNTS = (1, 2, 3, 4, 6)
SIZES = ((2, 3), (4, 6))  # object radius ranges, as fractions of image_size / 28
MAX_CLASSES = len(COUNTS) * len(SIZES)
STREAMS = {"train": 0, "test": 1}  # a site's train and test images never share a random stream


def class_names(num_classes: int) -> tuple[str, ...]:
    return tuple(f"{COUNTS[c % len(COUNTS)]}x{'small' if c < len(COUNTS) else 'large'}" for c in range(num_classes))


def site_shift(seed: int, site_id: int) -> SiteShift:
    """The scanner of synthetic site `site_id` in run `seed`."""
    return SiteShift.draw(np.random.default_rng(site_seed(seed, site_id, 2)))


def synthetic_site(
    site_id: int,
    seed: int = 0,
    num_classes: int = MAX_CLASSES,
    per_class: int = 30,
    image_size: int = 28,
    split: str = "train",
    shift: SiteShift | None = None,
) -> LabelledImages:
    """Images (M, 1, S, S) in about [0, 1] with balanced labels, for one site and split."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the synthetic set has 1..{MAX_CLASSES} classes")
    if split not in STREAMS:
        raise ValueError(f"split={split!r}: use one of {tuple(STREAMS)}")
    from monai.data.synthetic import create_test_image_2d  # MONAI loads here, not on import (3.4 s; docs/DEVELOPING.md)

    rng = np.random.RandomState(site_seed(seed, site_id, STREAMS[split]) % 2**32)
    scale = image_size / 28
    images, labels = [], []
    for label in range(num_classes):
        count, (rmin, rmax) = COUNTS[label % len(COUNTS)], SIZES[label // len(COUNTS)]
        for _ in range(per_class):
            image, _ = create_test_image_2d(
                image_size,
                image_size,
                num_objs=count,
                rad_min=max(1, round(rmin * scale)),
                rad_max=max(2, round(rmax * scale)),
                noise_max=0.0,
                random_state=rng,
            )
            images.append(np.clip(image, 0, 1).astype(np.float32))
            labels.append(label)
    shift = site_shift(seed, site_id) if shift is None else shift
    generator = torch.Generator().manual_seed(site_seed(seed, site_id, STREAMS[split], 3))
    return LabelledImages(
        images=shift(torch.from_numpy(np.stack(images)).unsqueeze(1), generator),
        labels=torch.tensor(labels),
        classes=class_names(num_classes),
        ids=tuple(f"synthetic:{seed}:{site_id}:{split}:{i}" for i in range(len(labels))),
    )
