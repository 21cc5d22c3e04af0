"""Offline site data from MONAI's synthetic image helper: learnable classes, per-site scanner shift.

A class is a (number of objects, object size) pair drawn with `monai.data.synthetic`; each site
applies its own intensity scale, contrast and noise, so sites differ the way scanners do. All
randomness comes from the (seed, site) pair: the same call returns the same images.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data.synthetic import create_test_image_2d

from common.tasks import site_seed

COUNTS = (1, 2, 3, 4, 6)
SIZES = ((2, 3), (4, 6))  # object radius ranges, as fractions of image_size / 28


def synthetic_site(
    site_id: int, seed: int = 0, num_classes: int = 10, per_class: int = 30, image_size: int = 28
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (M, 1, S, S) float32 in [0, 1]-ish, labels (M,)) for one site."""
    if not 1 <= num_classes <= len(COUNTS) * len(SIZES):
        raise ValueError(f"num_classes={num_classes}: the synthetic set has 1..{len(COUNTS) * len(SIZES)} classes")
    rng = np.random.RandomState(site_seed(seed, site_id) % 2**32)
    scale = image_size / 28
    gain, gamma, noise = rng.uniform(0.6, 1.4), rng.uniform(0.7, 1.4), rng.uniform(0.0, 0.15)
    images, labels = [], []
    for label in range(num_classes):
        count, (rmin, rmax) = COUNTS[label % len(COUNTS)], SIZES[label // len(COUNTS)]
        for _ in range(per_class):
            image, _ = create_test_image_2d(
                image_size, image_size, num_objs=count, rad_min=max(1, round(rmin * scale)),
                rad_max=max(2, round(rmax * scale)), noise_max=0.0, random_state=rng,
            )
            image = gain * np.power(np.clip(image, 0, 1), gamma) + rng.normal(0, noise, image.shape)
            images.append(image.astype(np.float32))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).unsqueeze(1), torch.tensor(labels)
