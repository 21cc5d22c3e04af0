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


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def points(self) -> str:
        """A difference of accuracies (fractions) in percentage points with its interval:
        "+2.4 (+1.9 to +2.8)", as the docs' tables write it."""
        return points(self.mean, self.low, self.high)


def points(mean: float, low: float, high: float) -> str:
    """`Interval.points` for an interval kept as numbers (a headline.json row's)."""
    return f"{100 * mean:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided `level` quantile of Student's t with `dof` degrees of freedom (2.093 for 19)."""
    from scipy.special import stdtrit  # here, not at the top: scipy.stats cost every process 1.3 s to import

    return float(stdtrit(dof, (1 + level) / 2))  # the same numbers as scipy.stats.t.ppf


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
    half = t_quantile(len(x) - 1, level) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """A proportion (accuracy, sensitivity, specificity on one site's images) and its Wilson score
    interval: inside [0, 1], and honest at 0%, 100% and small n, where the normal
    approximation's p ± z·sqrt(p(1-p)/n) collapses to zero width."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes out of {n}")
    from scipy.special import ndtri

    z = float(ndtri((1 + level) / 2))  # scipy.stats.norm.ppf
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


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
