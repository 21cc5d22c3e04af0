"""What a site does with a federation's meta-model: adapt it on a few labelled examples of its
own task with the algorithm's inner loop (or prototypes), then measure it on the rest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.algorithms import build_algorithm
from common.algorithms.metasgd import PREFIX
from common.backbones import build_model
from common.clinical import clinical_summary, roc_curves
from common.config import EpisodeConfig, MetaConfig
from common.data import LabelledImages
from common.export import load_meta_model, save_meta_model
from common.functional import Params, cross_entropy
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
    roc: dict[str, tuple[torch.Tensor, torch.Tensor]]  # class -> (false-positive rates, true-positive rates)


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
    model_dir: Path,
    data: LabelledImages,
    shots: int,
    steps: int | None = None,
    seed: int = 0,
    kernels: str = "auto",
    positive: str | None = None,
    lr_scale: float = 1.0,
) -> Personalized:
    """`model_dir`'s meta-model adapted on `shots` examples per class of `data` (`steps` inner steps,
    None: its eval-inner-steps, at `lr_scale` times its inner rate) and scored on the rest."""
    meta, model_cfg, meta_cfg, episode_cfg, _ = load_meta_model(model_dir)
    classes = len(data.classes)
    if positive is not None and positive not in data.classes:
        raise ValueError(f"--positive {positive!r} is not one of the site's classes {list(data.classes)}")
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
    algorithm = build_algorithm(build_model(model_cfg), meta_cfg, resolve_kernels(kernels)).with_rate_scale(lr_scale)
    meta = resize_head(meta, classes)
    support, rest = split_support(data, shots, torch.Generator().manual_seed(seed))
    adapted = algorithm.adapt(meta, data.images[support], data.labels[support], steps)
    with torch.no_grad():
        logits = torch.cat([algorithm.predict(adapted, chunk) for chunk in data.images[rest].split(256)])
    truth = data.labels[rest]
    summary = clinical_summary(logits, truth, data.classes, seed=seed, positive=positive)
    report = {
        "support_per_class": shots,
        **summary,
        "loss": cross_entropy(logits, truth).item(),
        "algorithm": meta_cfg.algorithm,
        "adaptation_steps": meta_cfg.eval_inner_steps if steps is None else steps,
        "adaptation_lr_scale": lr_scale,
    }
    confusion = torch.tensor(summary["confusion"])
    curves = roc_curves(logits, truth, data.classes, summary.get("positive_class"))
    params = {k: v.detach() for k, v in adapted.items()}
    return Personalized(params, data.classes, report, confusion, model_cfg, meta_cfg, episode_cfg, curves)


def adaptation(report: dict) -> str:
    """How a report's model was adapted, as a title says it: "80 steps at 0.3x its inner rate"."""
    scale = report.get("adaptation_lr_scale", 1.0)
    return f"{report['adaptation_steps']} steps" + ("" if scale == 1.0 else f" at {scale:g}x its inner rate")


def write_personalized(out_dir: Path, result: Personalized) -> None:
    """The adapted model (safetensors + JSON), report.json, report.md, and the confusion matrix and
    ROC curves as PNGs."""
    import json

    from common.clinical import markdown
    from common.clinical_plots import plot_confusion, plot_roc

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
    r = result.report
    (out_dir / "report.json").write_text(json.dumps({**r, "classes": list(result.classes)}, indent=1))
    title = f"{r['support_per_class']}-shot adaptation of a {r['algorithm']} meta-model ({adaptation(r)})"
    (out_dir / "report.md").write_text(markdown(r, title))
    plot_confusion(result.confusion, result.classes, title, out_dir / "confusion_matrix.png")
    plot_roc(
        result.roc, {name: row["auc_one_vs_rest"] for name, row in r["per_class"].items()}, out_dir / "roc_curve.png"
    )
