"""Confidence intervals for few-shot results: a mean over episodes (t-quantile), and the paired
difference of two methods scored on the same episodes (the comparison a reviewer trusts: the
episode-to-episode spread that both methods share cancels)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean and two-sided `level` CI from the t distribution with n - 1 degrees of freedom
    (NaNs left out; one value: an undefined interval)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


def paired_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """The mean of a - b over the same episodes and its t interval. `a` and `b` must be scored on
    identical episodes, in the same order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same episodes: {a.shape} and {b.shape}")
    return t_interval(a - b, level)


def episodes_hash(*tensors: torch.Tensor) -> str:
    """A digest of the exact episodes (images and labels): equal for two methods only if they were
    scored on byte-identical tasks."""
    digest = hashlib.sha256()
    for t in tensors:
        array = t.detach().cpu().contiguous().numpy()
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
