"""The adapt report's figures: a confusion matrix with counts and row percentages, and ROC curves
(one per class against the rest; the positive class alone for two classes), chance marked."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: torch.Tensor, classes: tuple[str, ...], title: str, path: Path) -> None:
    plt = _pyplot()
    k = len(classes)
    rows = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * k + 2.5), max(4.0, 0.9 * k + 2)))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if rows[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(confusion[i, j])}\n{100 * rows[i, j]:.0f}%", ha="center", va="center", color=colour)
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row % of that class)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PER_PANEL = 4  # curves per panel: more are unreadable


def plot_roc(curves: dict[str, tuple[torch.Tensor, torch.Tensor]], aucs: dict[str, float | None], path: Path) -> None:
    """One panel per group of at most PER_PANEL classes, each with the chance diagonal."""
    plt = _pyplot()
    names = list(curves)
    groups = [names[i : i + PER_PANEL] for i in range(0, len(names), PER_PANEL)] or [[]]
    columns = min(len(groups), 3)
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax, group in zip(axes.flat, groups):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (0.5)")
        for name in group:
            fpr, tpr = curves[name]
            value = aucs.get(name)
            ax.step(fpr.numpy(), tpr.numpy(), where="post", label=name if value is None else f"{name} ({value:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(loc="lower right", fontsize=8, title="class (AUROC)", title_fontsize=8)
    title = "ROC, each class against the rest" if len(names) > 1 else f"ROC ({names[0]} positive)" if names else "ROC"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
