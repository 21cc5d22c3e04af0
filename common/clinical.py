"""What a clinician-scientist reads after a site adapts a model: accuracy and balanced accuracy,
each class's sensitivity, specificity and PPV (one-vs-rest) with Wilson intervals, the AUROC with
a stratified bootstrap interval, the counts behind every figure, and the ROC curves."""

from __future__ import annotations

import math

import numpy as np
import torch

from common.metrics import binary_auc, bootstrap_auc, per_class_rates, roc_curve
from common.stats import Interval, wilson_interval

AUC_RESAMPLES = 1000


def _ci(interval: Interval) -> list[float]:
    return [interval.low, interval.high]


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined rate is null."""
    return None if math.isnan(value) else value


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    return confusion


def clinical_summary(
    logits: torch.Tensor,
    truth: torch.Tensor,
    classes: tuple[str, ...],
    seed: int = 0,
    resamples: int = AUC_RESAMPLES,
    positive: str | None = None,
) -> dict:
    """The evaluation of one adapted model on one site's held-back images (`truth` indexes
    `classes`). Two classes: `positive` (default the second) is the finding, whose sensitivity
    and specificity are also given at the top level."""
    if positive is not None and positive not in classes:
        raise ValueError(f"positive class {positive!r} is not one of the site's classes {list(classes)}")
    probabilities = torch.softmax(logits.detach().double(), 1)
    predicted = logits.argmax(1)
    confusion = confusion_matrix(truth, predicted, len(classes))
    n = len(truth)
    correct = int((predicted == truth).sum())
    rates = per_class_rates(confusion)
    positives = confusion.sum(1)
    auc_value, auc_low, auc_high = bootstrap_auc(logits, truth, resamples=resamples, seed=seed)
    per_class = {}
    for c, name in enumerate(classes):
        tp, fn, fp, tn = (int(rates[k][c]) for k in ("tp", "fn", "fp", "tn"))
        cases = tp + fn
        sensitivity = wilson_interval(tp, cases)
        specificity = wilson_interval(tn, n - cases)
        per_class[name] = {
            "cases": cases,
            "predicted": tp + fp,
            "sensitivity": _number(rates["sensitivity"][c].item()),
            "sensitivity_ci": _ci(sensitivity) if cases else None,
            "specificity": _number(rates["specificity"][c].item()),
            "specificity_ci": _ci(specificity) if n - cases else None,
            "ppv": _number(rates["ppv"][c].item()),
            "auc_one_vs_rest": _number(binary_auc(probabilities[:, c], truth == c)),
        }
    accuracy = wilson_interval(correct, n)
    present = [c for c in range(len(classes)) if positives[c] > 0]
    summary = {
        "evaluated": n,
        "accuracy": accuracy.mean,
        "accuracy_ci": _ci(accuracy),
        "balanced_accuracy": float(np.mean([rates["sensitivity"][c].item() for c in present])),
        "auc": _number(auc_value),
        "auc_ci": [_number(auc_low), _number(auc_high)],
        "auc_ci_method": f"stratified percentile bootstrap, {resamples} resamples, seed {seed}",
        "ci_level": 0.95,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
    if len(classes) == 2:
        positive = positive or classes[1]
        summary.update(
            positive_class=positive,
            sensitivity=per_class[positive]["sensitivity"],
            sensitivity_ci=per_class[positive]["sensitivity_ci"],
            specificity=per_class[positive]["specificity"],
            specificity_ci=per_class[positive]["specificity_ci"],
        )
    return summary


def roc_curves(
    logits: torch.Tensor, truth: torch.Tensor, classes: tuple[str, ...], positive: str | None = None
) -> dict[str, tuple]:
    """Per class (only the positive class for two): (false-positive rates, true-positive rates)."""
    probabilities = torch.softmax(logits.detach().double(), 1)
    shown = [classes.index(positive or classes[1])] if len(classes) == 2 else range(len(classes))
    return {
        classes[c]: roc_curve(probabilities[:, c], truth == c)
        for c in shown
        if 0 < int((truth == c).sum()) < len(truth)
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _pct_ci(values: list[float] | None) -> str:
    if values is None or any(v is None or math.isnan(v) for v in values):
        return "n/a"
    return f"{100 * values[0]:.1f} to {100 * values[1]:.1f}"


def markdown(summary: dict, title: str) -> str:
    """The report as a page: the headline figures, then one row per class."""
    auc_text = "n/a" if summary["auc"] is None else f"{summary['auc']:.3f}"
    auc_ci = summary["auc_ci"]
    auc_ci_text = "n/a" if None in auc_ci else f"{auc_ci[0]:.3f} to {auc_ci[1]:.3f}"
    lines = [
        f"# {title}",
        "",
        f"Evaluated on **{summary['evaluated']}** images the adaptation never saw (95% intervals).",
        "",
        "| measure | value | 95% CI |",
        "| --- | --- | --- |",
        f"| accuracy | {_pct(summary['accuracy'])} | {_pct_ci(summary['accuracy_ci'])} (Wilson) |",
        f"| balanced accuracy | {_pct(summary['balanced_accuracy'])} | |",
        f"| AUROC | {auc_text} | {auc_ci_text} (bootstrap) |",
    ]
    if "positive_class" in summary:
        positive = summary["positive_class"]
        lines += [
            f"| sensitivity ({positive}) | {_pct(summary['sensitivity'])} | {_pct_ci(summary['sensitivity_ci'])} |",
            f"| specificity ({positive}) | {_pct(summary['specificity'])} | {_pct_ci(summary['specificity_ci'])} |",
        ]
    lines += [
        "",
        "Per class, one against the rest:",
        "",
        "| class | cases | predicted | sensitivity (95% CI) | specificity (95% CI) | PPV | AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in summary["per_class"].items():
        one_auc = "n/a" if row["auc_one_vs_rest"] is None else f"{row['auc_one_vs_rest']:.3f}"
        lines.append(
            f"| {name} | {row['cases']} | {row['predicted']} | {_pct(row['sensitivity'])} "
            f"({_pct_ci(row['sensitivity_ci'])}) | {_pct(row['specificity'])} ({_pct_ci(row['specificity_ci'])}) "
            f"| {_pct(row['ppv'])} | {one_auc} |"
        )
    return "\n".join(lines) + "\n"
