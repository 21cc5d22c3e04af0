"""Few-shot and clinical evaluation metrics: accuracy, AUC (linear memory), ROC curves,
sensitivity and specificity, and confidence intervals over episodes (t distribution)."""

from __future__ import annotations

import math

import numpy as np
import torch

from common.stats import t_interval, t_quantile


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `values`, ties sharing their average rank (as in the Mann-Whitney U test)."""
    order = torch.argsort(values)
    _, counts = torch.unique_consecutive(values[order], return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # the mean of ranks end-count+1 .. end
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(average, counts)
    return ranks


def binary_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half: the
    Mann-Whitney statistic from ranks, O(N log N) time and O(N) memory. NaN without both kinds."""
    scores = scores.detach().double().flatten()
    positive = positive.flatten().bool()
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(scores)[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve; for N > 2 classes the mean of one-vs-rest AUCs (macro).

    Softmax scores, ranked (no thresholds, no positives-by-negatives matrix). A class absent from
    `labels` (or present alone) is left out of the mean."""
    scores = torch.softmax(logits.detach().float(), dim=1)
    classes = range(1, 2) if scores.shape[1] == 2 else range(scores.shape[1])
    values = [binary_auc(scores[:, c], labels == c) for c in classes]
    values = [v for v in values if not math.isnan(v)]
    return torch.tensor(sum(values) / len(values) if values else math.nan)


def weighted_auc(scores: torch.Tensor, positive: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """`binary_auc` of each row of `weights` (R, N): the AUC of a sample holding image i
    weights[r, i] times, as a bootstrap resample does, without materialising it. Scores are
    sorted once; each resample then costs O(N) (sums over tie groups and one cumulative sum)."""
    values = scores.detach().double().flatten().numpy()
    is_positive = positive.flatten().bool().numpy()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # each tie group's first index
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = np.add.reduceat(w * is_positive[order], starts, axis=1)  # (R, groups)
    neg = np.add.reduceat(w * ~is_positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each group
    pairs = pos.sum(1) * neg.sum(1)
    won = (pos * (below + 0.5 * neg)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, won / pairs, np.nan)


def bootstrap_auc(
    logits: torch.Tensor, labels: torch.Tensor, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """`auc` (macro one-vs-rest) and its percentile bootstrap interval, resampling images with
    replacement within each class (so every class keeps its count). Seeded; linear memory per
    chunk of resamples."""
    scores = torch.softmax(logits.detach().double(), dim=1)
    labels = labels.flatten()
    n = len(labels)
    classes = [1] if scores.shape[1] == 2 else list(range(scores.shape[1]))
    present = [c for c in classes if 0 < int((labels == c).sum()) < n]
    estimate = auc(logits, labels).item()
    if not present:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(labels.numpy() == c) for c in np.unique(labels.numpy())]
    draws = []
    for start in range(0, resamples, 100):
        r = min(100, resamples - start)
        weights = np.zeros((r, n))
        for members in strata:
            weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=r)
        per_class = [weighted_auc(scores[:, c], labels == c, weights) for c in present]
        draws.append(np.mean(per_class, axis=0))
    values = np.concatenate(draws)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def roc_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(false-positive rates, true-positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = scores.detach().double().flatten()
    positive = positive.flatten().bool()
    order = torch.argsort(scores, descending=True)
    hits = positive[order].double()
    tp, fp = torch.cumsum(hits, 0), torch.cumsum(1 - hits, 0)
    last = torch.ones_like(scores, dtype=torch.bool)  # a threshold between distinct scores only
    last[:-1] = scores[order][1:] != scores[order][:-1]
    tp, fp = (
        torch.cat([torch.zeros(1, dtype=tp.dtype), tp[last]]),
        torch.cat([torch.zeros(1, dtype=fp.dtype), fp[last]]),
    )
    return fp / max(fp[-1].item(), 1.0), tp / max(tp[-1].item(), 1.0)


def per_class_rates(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """One-vs-rest sensitivity (recall), specificity and positive predictive value per class, from
    a confusion matrix with true classes as rows, with the counts behind them (tp, fn, fp, tn).
    A rate with no cases to count is NaN."""
    confusion = confusion.double()
    total = confusion.sum()
    tp = confusion.diag()
    fn = confusion.sum(1) - tp
    fp = confusion.sum(0) - tp
    tn = total - tp - fn - fp

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(b > 0, a / b.clamp_min(1), torch.full_like(a, math.nan))

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        **{"tp": tp, "fn": fn, "fp": fp, "tn": tn},
    }


def mean_ci(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval over episodes); NaNs are ignored."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    interval = t_interval(x.numpy())
    return interval.mean, interval.half_width


def pooled_mean_ci(parts: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """Combine (mean, half-width, n) of disjoint episode sets (each from `mean_ci`) into one.

    Sites report summaries, never their episodes; the pooled variance is recovered from each
    part's half-width (within-part, t with n - 1 degrees of freedom) and the spread of the part
    means (between-part)."""
    parts = [(m, h, n) for m, h, n in parts if n > 0 and not math.isnan(m)]
    total = sum(n for _, _, n in parts)
    if total == 0:
        return math.nan, math.nan, 0
    mean = sum(m * n for m, _, n in parts) / total
    squares = 0.0
    for m, h, n in parts:
        var = (h * math.sqrt(n) / t_quantile(n - 1)) ** 2 if n > 1 and not math.isnan(h) else 0.0
        squares += (n - 1) * var + n * (m - mean) ** 2
    half = t_quantile(total - 1) * math.sqrt(squares / (total - 1)) / math.sqrt(total) if total > 1 else math.nan
    return mean, half, total
