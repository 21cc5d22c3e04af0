"""What a site does with a federation's meta-model: adapt it on a few labelled examples of its
own task with the algorithm's inner loop (or prototypes), then measure it on the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.algorithms import build_algorithm
from common.algorithms.metasgd import PREFIX
from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.data import LabelledImages
from common.export import load_meta_model, save_meta_model
from common.functional import Params, cross_entropy
from common.metrics import Z95, auc
from common.models import ModelConfig
from common.native import resolve_kernels


@dataclass(frozen=True)
class Personalized:
    params: Params
    classes: tuple[str, ...]
    report: dict
    confusion: torch.Tensor  # (true class, predicted class) counts
    model: ModelConfig
    meta: MetaConfig
    episode: EpisodeConfig


def resize_head(meta: Params, classes: int) -> Params:
    """Keep the first `classes` outputs of the head (and of Meta-SGD's head rates). Episodes
    relabel classes at random, so no row of a meta-learned head belongs to a particular class."""
    return {k: v[:classes] if k.removeprefix(PREFIX).startswith("head.") else v for k, v in meta.items()}


def split_support(data: LabelledImages, shots: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(support, evaluation) indices: `shots` per class for support; evaluation is everything
    else except the support patients' other images, so no patient is on both sides."""
    groups = data.patient_groups()
    per_class = []
    for c, name in enumerate(data.classes):
        index = torch.nonzero(data.labels == c).flatten()
        if len(index) <= shots:
            raise ValueError(
                f"class {name!r} has {len(index)} examples: "
                f"{shots} shots need at least {shots + 1} (one to evaluate on); "
                "lower --shots or add examples"
            )
        per_class.append(index[torch.randperm(len(index), generator=generator)[:shots]])
    support = torch.cat(per_class)
    rest = torch.nonzero(~torch.isin(groups, groups[support])).flatten()
    missing = [n for c, n in enumerate(data.classes) if not bool((data.labels[rest] == c).any())]
    if missing:
        raise ValueError(
            f"classes {missing} have no examples left to evaluate on "
            "once the support patients are set aside; add patients"
        )
    return support, rest


def personalize(
    model_dir: Path, data: LabelledImages, shots: int, steps: int | None = None, seed: int = 0, kernels: str = "auto"
) -> Personalized:
    meta, model_cfg, meta_cfg, episode_cfg, _ = load_meta_model(model_dir)
    classes = len(data.classes)
    if classes > model_cfg.num_classes:
        raise ValueError(
            f"the site has {classes} classes but the meta-model was trained on {model_cfg.num_classes}-way tasks; "
            f"meta-train with ways={classes} or more"
        )
    if tuple(data.images.shape[1:]) != (model_cfg.in_channels, *(model_cfg.image_size,) * model_cfg.spatial_dims):
        raise ValueError(
            f"images of shape {tuple(data.images.shape[1:])} do not fit the meta-model's input "
            f"({model_cfg.in_channels} channels, {model_cfg.image_size}px, {model_cfg.spatial_dims}D)"
        )
    model_cfg = replace(model_cfg, num_classes=classes)
    algorithm = build_algorithm(build_model(model_cfg), meta_cfg, resolve_kernels(kernels))
    meta = resize_head(meta, classes)
    support, rest = split_support(data, shots, torch.Generator().manual_seed(seed))
    adapted = algorithm.adapt(meta, data.images[support], data.labels[support], steps)
    with torch.no_grad():
        logits = torch.cat([algorithm.predict(adapted, chunk) for chunk in data.images[rest].split(256)])
    truth, predicted = data.labels[rest], logits.argmax(1)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    acc = (predicted == truth).float().mean().item()
    n = len(rest)
    report = {
        "support_per_class": shots,
        "evaluated": n,
        "accuracy": acc,
        "accuracy_ci95": Z95 * math.sqrt(acc * (1 - acc) / n),
        "auc": auc(logits, truth).item(),
        "loss": cross_entropy(logits, truth).item(),
        "recall_per_class": {
            name: (confusion[c, c] / confusion[c].sum().clamp_min(1)).item() for c, name in enumerate(data.classes)
        },
        "balanced_accuracy": (confusion.diag() / confusion.sum(1).clamp_min(1)).mean().item(),
        "algorithm": meta_cfg.algorithm,
        "adaptation_steps": meta_cfg.eval_inner_steps if steps is None else steps,
    }
    params = {k: v.detach() for k, v in adapted.items()}
    return Personalized(params, data.classes, report, confusion, model_cfg, meta_cfg, episode_cfg)


def write_personalized(out_dir: Path, result: Personalized) -> None:
    """The adapted model (safetensors + JSON), report.json and a confusion-matrix PNG."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    save_meta_model(
        out_dir / "model",
        result.params,
        result.model,
        result.meta,
        result.episode,
        classes=list(result.classes),
        personalized=True,
    )
    (out_dir / "report.json").write_text(
        json.dumps({**result.report, "classes": list(result.classes), "confusion": result.confusion.tolist()}, indent=1)
    )
    fig, ax = plt.subplots(figsize=(1.2 * len(result.classes) + 2.5, 1.2 * len(result.classes) + 2))
    ax.imshow(result.confusion.numpy(), cmap="Blues")
    for (i, j), value in zip(
        ((i, j) for i in range(len(result.classes)) for j in range(len(result.classes))),
        result.confusion.flatten().tolist(),
    ):
        ax.text(j, i, str(value), ha="center", va="center")
    ticks = range(len(result.classes))
    ax.set_xticks(ticks, result.classes, rotation=30, ha="right")
    ax.set_yticks(ticks, result.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    r = result.report
    ax.set_title(
        f"{r['support_per_class']}-shot {r['algorithm']}: accuracy {r['accuracy']:.3f} ± {r['accuracy_ci95']:.3f}, "
        f"AUC {r['auc']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)
