"""How the coordinator combines the meta-gradients it accepted (`server.replies` decides which).

`combine` is the task-weighted mean (the default, exact FedMeta), or, when a site may be faulty
or hostile, the coordinate-wise median or trimmed mean of the accepted meta-gradients. The
robust rules ignore task counts: a site must not buy influence by claiming more tasks.
"""

from __future__ import annotations

import torch

from common.functional import tensor_sum
from common.runconfig import AGGREGATORS


def combine(
    updates: list[tuple[dict[str, torch.Tensor], float]], rule: str = "mean", trim_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Aggregate accepted meta-gradients (float64 inside, float32 out)."""
    if not updates:
        raise ValueError("no meta-gradients to aggregate")
    if rule not in AGGREGATORS:
        raise ValueError(f"aggregator={rule!r}: choose one of {', '.join(AGGREGATORS)}")
    keys = updates[0][0].keys()
    if rule == "mean":
        total = sum(weight for _, weight in updates)
        return {k: tensor_sum(u[k].double() * (w / total) for u, w in updates).float() for k in keys}
    out = {}
    for k in keys:
        stacked = torch.stack([u[k].double() for u, _ in updates])  # (sites, *shape)
        if rule == "median":
            out[k] = stacked.quantile(0.5, dim=0) if stacked.numel() <= 2**24 else stacked.median(dim=0).values
        else:
            cut = int(trim_fraction * len(updates))
            kept = stacked.sort(dim=0).values[cut : len(updates) - cut]
            out[k] = kept.mean(dim=0)
        out[k] = out[k].float()
    return out
