"""Dividing one labelled pool among sites (quantity skew, Dirichlet label skew) and a site's data
into train and test by patient. Every function takes its randomness from the generator given."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch


def split_by_shares(size: int, shares: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint random index sets, one per share (shares are relative; quantity skew)."""
    if not shares or min(shares) <= 0:
        raise ValueError(f"shares={shares}: give each site a positive share")
    bounds = np.round(np.cumsum([0.0, *shares]) / sum(shares) * size).astype(int)
    order = rng.permutation(size)
    return [np.sort(order[a:b]) for a, b in pairwise(bounds)]


def dirichlet_proportions(num_classes: int, sites: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """(classes, sites) shares of each class per site, each row drawn from Dir(alpha).

    Small alpha gives sites few classes each (label skew); large alpha approaches an even split.
    Draw once and use for every split, so a site's test data has the label mix of its train data."""
    if alpha <= 0 or sites < 1:
        raise ValueError(f"alpha={alpha}, sites={sites}: alpha must be > 0 and sites >= 1")
    return rng.dirichlet([alpha] * sites, size=num_classes)


def split_by_proportions(labels: np.ndarray, proportions: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint index sets, one per site, class `c` divided as `proportions[c]` (a row of zeros:
    the class goes to no site)."""
    parts: list[list[np.ndarray]] = [[np.zeros(0, dtype=np.int64)] for _ in range(proportions.shape[1])]
    for label in range(proportions.shape[0]):
        index = rng.permutation(np.flatnonzero(labels == label))
        if not proportions[label].sum() > 0:  # no site keeps this class: nobody gets its examples
            continue
        cuts = (np.cumsum(proportions[label]) * len(index)).round().astype(int)[:-1]
        for site, chunk in enumerate(np.split(index, cuts)):
            parts[site].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def split_by_patient(
    groups: torch.Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) sample indices with every patient wholly on one side.

    Patients are shuffled and moved to test until it holds `test_fraction` of the samples."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1)")
    patients = torch.unique(groups)
    if len(patients) < 2:
        raise ValueError("a train/test split by patient needs at least 2 patients")
    order = patients[torch.randperm(len(patients), generator=generator)]
    sizes = torch.stack([(groups == p).sum() for p in order])
    in_test = (torch.cumsum(sizes, 0) - sizes) < test_fraction * len(groups)
    in_test[-1] = False  # keep at least one patient for training
    test_patients = order[in_test]
    mask = torch.isin(groups, test_patients)
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
