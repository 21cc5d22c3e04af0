"""Site-level differential privacy, the arithmetic: clip a whole meta-gradient to an L2 bound, and
Gaussian noise from an unpredictable generator.

A site's contribution to a round is its entire meta-gradient, so the bound is on the global L2
norm over all arrays (the "site" is the privacy unit, not an example). Noise must not be
predictable by whoever sees the result. So it comes from a generator seeded by the operating
system, never from the run seed, and DP runs are deliberately not bit-reproducible.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import torch


def l2_norm(update: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))


def clip(update: dict[str, torch.Tensor], bound: float) -> tuple[dict[str, torch.Tensor], float]:
    """`update` scaled so its global L2 norm is at most `bound` (unchanged when it already is);
    also returns the norm before clipping."""
    if not bound > 0:
        raise ValueError(f"clipping bound {bound}: must be > 0")
    norm = l2_norm(update)
    if not math.isfinite(norm):
        raise ValueError("cannot clip a meta-gradient with non-finite values (overflow in its dtype?)")
    if norm <= bound:
        return dict(update), norm
    scale = bound / norm
    for _ in range(20):  # rounding to the update's dtype (float16 too) must not land above the bound
        clipped = {k: (v.double() * scale).to(v.dtype) for k, v in update.items()}
        after = l2_norm(clipped)
        if after <= bound:
            return clipped, norm
        scale *= bound / after * (1 - 1e-4)
    raise ArithmeticError(f"could not clip to {bound} in {len(update)} arrays (norm {norm})")


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def add_noise(
    update: dict[str, torch.Tensor], std: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """`update` + N(0, std^2) on every coordinate, from an OS-seeded generator unless one is given."""
    generator = generator or secure_generator()
    return {
        k: v + torch.randn(v.shape, generator=generator, dtype=torch.float64).to(v.dtype) * std
        for k, v in update.items()
    }


def site_noise_std(noise_multiplier: float, bound: float, sampled: int) -> float:
    """Each of `sampled` sites' share of N(0, (multiplier * bound)^2) on the sum: the shares add up to it."""
    return noise_multiplier * bound / math.sqrt(sampled)
