"""Scanner-like domain shift of one site: intensity scale, contrast, gamma, blur, resolution, noise.

Applied to images in [0, 1]. All randomness (noise, and the shift itself when drawn with
`SiteShift.draw`) comes from the generator or seed it is given, so a site's data is reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from common.device import torch_threads


@dataclass(frozen=True)
class SiteShift:
    """`gain` scales intensity, `contrast` stretches around the mean, `gamma` bends the curve,
    `blur` is a Gaussian sigma in pixels, `resolution` < 1 loses detail (down- then up-sampling),
    `noise` is the standard deviation of added Gaussian noise."""

    gain: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    blur: float = 0.0
    resolution: float = 1.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if min(self.gain, self.contrast, self.gamma) <= 0 or self.blur < 0 or self.noise < 0:
            raise ValueError(f"{self}: gain, contrast and gamma must be > 0, blur and noise >= 0")
        if not 0 < self.resolution <= 1:
            raise ValueError(f"resolution={self.resolution}: must be in (0, 1] (1 keeps full detail)")

    @classmethod
    def draw(cls, rng: np.random.Generator) -> SiteShift:
        """A random scanner: the ranges span what differs between real acquisition protocols."""
        return cls(
            gain=float(rng.uniform(0.7, 1.3)),
            contrast=float(rng.uniform(0.7, 1.4)),
            gamma=float(rng.uniform(0.7, 1.4)),
            blur=float(rng.choice([0.0, 0.0, 0.5, 1.0])),
            resolution=float(rng.choice([1.0, 1.0, 0.75, 0.5])),
            noise=float(rng.uniform(0.0, 0.1)),
        )

    @classmethod
    def from_mapping(cls, values: dict[str, float]) -> SiteShift:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown shift keys {unknown}; known are {[f.name for f in fields(cls)]}")
        return cls(**{k: float(v) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == SiteShift()

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(M, C, *S) in [0, 1] -> shifted images of the same shape (float32), the same bytes
        whatever torch's thread count: computed on one thread (with two, some sites' images
        differed in the last bit, so their episodes' digests did too)."""
        if self.is_identity:
            return images
        with torch_threads(1):
            return self._shifted(images, generator)

    def _shifted(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images.float().clamp(0, 1) ** self.gamma
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        x = self.gain * ((x - mean) * self.contrast + mean)
        if self.blur > 0:
            # MONAI smooths each channel alone: fold the batch into channels for one call
            from monai.transforms import GaussianSmooth  # MONAI loads here, not on import (3.4 s; docs/DEVELOPING.md)

            smooth = GaussianSmooth(sigma=self.blur)
            x = torch.as_tensor(smooth(x.reshape(-1, *x.shape[2:]))).reshape(x.shape)
        if self.resolution < 1:
            size = x.shape[2:]
            low = [max(1, round(s * self.resolution)) for s in size]
            mode = "bilinear" if x.dim() == 4 else "trilinear"
            x = F.interpolate(F.interpolate(x, size=low, mode="area"), size=size, mode=mode, align_corners=False)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator)
        return x.float()
