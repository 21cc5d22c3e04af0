"""A site folder's preprocessing as a chain of MONAI transforms, declared in the folder's
`transforms.toml` and applied to each image right after it is loaded (channel first, with its
affine), before it is resized to the model's input:

    # site/transforms.toml: an abdominal CT window, then 1.5 mm pixels in RAS orientation
    [[transform]]
    name = "Orientation"
    axcodes = "RAS"
    [[transform]]
    name = "Spacing"
    pixdim = [1.5, 1.5, 2.0]
    [[transform]]
    name = "ScaleIntensityRange"
    a_min = -160.0
    a_max = 240.0
    b_min = 0.0
    b_max = 1.0
    clip = true

Only the MONAI array transforms listed in ALLOWED can be named (a config file never runs code),
each with MONAI's own keyword arguments. Without the file, each image is min-max scaled to
[0, 1], as before. The chain's fingerprint keys the folder's preprocessed cache.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # for annotations; MONAI loads where it is used (3.4 s; docs/DEVELOPING.md)
    from monai import transforms as mt

TRANSFORMS_TOML = "transforms.toml"
# intensity, geometry and shape transforms that make sense before a classifier; all deterministic
ALLOWED = (
    "ScaleIntensity",
    "ScaleIntensityRange",
    "ScaleIntensityRangePercentiles",
    "NormalizeIntensity",
    "ThresholdIntensity",
    "ClipIntensityPercentiles",
    "Orientation",
    "Spacing",
    "Resize",
    "CenterSpatialCrop",
    "SpatialPad",
    "ResizeWithPadOrCrop",
    "Flip",
    "Rotate90",
)


@dataclass(frozen=True)
class TransformChain:
    """MONAI transforms by name and keyword arguments, in order; empty: min-max to [0, 1]."""

    steps: tuple[tuple[str, str], ...] = ()  # (name, its arguments as sorted JSON)
    source: str = ""  # the file it came from, for messages

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.steps or "minmax-0-1").encode()).hexdigest()[:16]

    def build(self) -> mt.Compose:
        from monai import transforms as mt

        if not self.steps:
            return mt.Compose([mt.ScaleIntensity(minv=0.0, maxv=1.0)])
        return mt.Compose([getattr(mt, name)(**json.loads(args)) for name, args in self.steps])

    def describe(self) -> str:
        if not self.steps:
            return "min-max to [0, 1] per image (no transforms.toml)"
        return " -> ".join(
            f"{name}({', '.join(f'{k}={v}' for k, v in json.loads(a).items())})" for name, a in self.steps
        )


def load_chain(root: Path) -> TransformChain:
    """The folder's declared chain (empty without transforms.toml). Every step is built once
    here, so a wrong name or argument is a ValueError naming the file, the step and the fix."""
    path = Path(root) / TRANSFORMS_TOML
    if not path.is_file():
        return TransformChain()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    unknown = set(document) - {"transform"}
    if unknown or not isinstance(document.get("transform", []), list):
        raise ValueError(f"{path}: give the chain as [[transform]] tables (name = ..., then MONAI's arguments)")
    from monai import transforms as mt

    steps = []
    for number, table in enumerate(document.get("transform", []), start=1):
        name = table.get("name")
        if name not in ALLOWED:
            raise ValueError(f"{path}: transform {number} is {name!r}; use one of {', '.join(ALLOWED)}")
        args = {k: v for k, v in table.items() if k != "name"}
        try:
            getattr(mt, name)(**args)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{path}: transform {number} ({name}): {error}; see MONAI's {name} for its arguments"
            ) from None
        steps.append((name, json.dumps(args, sort_keys=True)))
    return TransformChain(tuple(steps), str(path))


def apply_chain(chain: mt.Compose, image: torch.Tensor) -> torch.Tensor:
    """The chain on one loaded image (a MetaTensor keeps its affine for Spacing/Orientation),
    returned as a plain float tensor."""
    out = chain(image)
    return torch.as_tensor(out).float().clone()
