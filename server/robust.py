"""What the coordinator accepts from a site, and how it combines what it accepted.

`check_update` rejects a meta-gradient that is not the meta-parameters' shape: keys missing or
extra, another shape, a non-float dtype, non-finite values, a non-positive task count, or an L2
norm above the bound. It says which, so the coordinator can log and record the site by name.

`combine` is the task-weighted mean (the default, exact FedMeta), or, when a site may be faulty
or hostile, the coordinate-wise median or trimmed mean of the accepted meta-gradients. The
robust rules ignore task counts: a site must not buy influence by claiming more tasks.
"""

from __future__ import annotations

import math

import torch

from common.privacy import l2_norm
from common.runconfig import AGGREGATORS
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_update(update: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], weight: float,
                 max_norm: float = 0.0) -> str | None:
    """Why `update` must not enter the aggregate, or None when it may."""
    missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference.keys())
    if missing or extra:
        return f"wrong meta-gradient keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        value = update[name]
        if tuple(value.shape) != tuple(ref.shape):
            return f"meta-gradient {name!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.dtype not in FLOAT_DTYPES:
            return f"meta-gradient {name!r} has dtype {value.dtype}, expected a float type"
        if not torch.isfinite(value).all():
            return f"meta-gradient {name!r} has non-finite values"
    if not (math.isfinite(weight) and weight > 0):
        return f"num-tasks={weight} is not a positive count"
    if max_norm > 0:
        norm = l2_norm(update)
        if norm > max_norm:
            return f"meta-gradient norm {norm:.3g} exceeds the bound max-update-norm={max_norm:g}"
    return None


def combine(updates: list[tuple[dict[str, torch.Tensor], float]], rule: str = "mean", trim_fraction: float = 0.1) -> dict[str, torch.Tensor]:
    """Aggregate accepted meta-gradients (float64 inside, float32 out)."""
    if not updates:
        raise ValueError("no meta-gradients to aggregate")
    if rule not in AGGREGATORS:
        raise ValueError(f"aggregator={rule!r}: choose one of {', '.join(AGGREGATORS)}")
    keys = updates[0][0].keys()
    if rule == "mean":
        total = sum(weight for _, weight in updates)
        return {k: sum(u[k].double() * (w / total) for u, w in updates).float() for k in keys}
    out = {}
    for k in keys:
        stacked = torch.stack([u[k].double() for u, _ in updates])  # (sites, *shape)
        if rule == "median":
            out[k] = stacked.quantile(0.5, dim=0) if stacked.numel() <= 2**24 else stacked.median(dim=0).values
        else:
            cut = int(trim_fraction * len(updates))
            kept = stacked.sort(dim=0).values[cut:len(updates) - cut]
            out[k] = kept.mean(dim=0)
        out[k] = out[k].float()
    return out
