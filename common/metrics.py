"""Few-shot evaluation metrics: per-episode accuracy, loss and AUC, and 95% confidence intervals."""

from __future__ import annotations

import math

import torch

Z95 = 1.959964  # two-sided 95% quantile of the normal distribution


def auc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve; for N > 2 classes the mean of one-vs-rest AUCs (macro).

    Computed as the Mann-Whitney statistic on softmax scores (ties count one half), so it needs
    no thresholds. A class absent from `labels` (or present alone) is left out of the mean."""
    scores = torch.softmax(logits.detach().float(), dim=1)
    classes = range(1, 2) if scores.shape[1] == 2 else range(scores.shape[1])
    values = []
    for c in classes:
        positive = labels == c
        pos, neg = scores[positive, c], scores[~positive, c]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            values.append(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
    return torch.stack(values).mean() if values else torch.tensor(float("nan"))


def mean_ci(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """(mean, half-width of the normal-approximation 95% CI over episodes); NaNs are ignored."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[~torch.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    half = Z95 * x.std(unbiased=True).item() / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return x.mean().item(), half


def pooled_mean_ci(parts: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """Combine (mean, half-width, n) of disjoint episode sets into one (mean, half-width, n).

    Sites report summaries, never their episodes; the pooled variance is recovered from each
    part's half-width (within-part) and the spread of the part means (between-part)."""
    parts = [(m, h, n) for m, h, n in parts if n > 0 and not math.isnan(m)]
    total = sum(n for _, _, n in parts)
    if total == 0:
        return float("nan"), float("nan"), 0
    mean = sum(m * n for m, _, n in parts) / total
    squares = 0.0
    for m, h, n in parts:
        var = (h * math.sqrt(n) / Z95) ** 2 if n > 1 and not math.isnan(h) else 0.0
        squares += (n - 1) * var + n * (m - mean) ** 2
    half = Z95 * math.sqrt(squares / (total - 1)) / math.sqrt(total) if total > 1 else float("nan")
    return mean, half, total
