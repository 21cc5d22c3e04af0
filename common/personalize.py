"""What a site does with a federation's meta-model: adapt it on a few labelled examples of its
own task with the algorithm's inner loop (or prototypes), then measure it on the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.algorithms import build_algorithm
from common.algorithms.metasgd import PREFIX
from common.algorithms.registry import REGISTRY
from common.backbones import build_model
from common.clinical import clinical_summary, roc_curves
from common.config import EpisodeConfig, MetaConfig
from common.data import LabelledImages
from common.export import load_meta_model, save_meta_model
from common.functional import Params, cross_entropy
from common.labels import match_classes
from common.models import ModelConfig
from common.native import resolve_kernels
from common.scenario import load_scenario


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
    evaluated: torch.Tensor  # which of the site's images were scored (never a support patient's)
    logits: torch.Tensor  # their logits, one column per site class


def head_classes(info: dict, model: ModelConfig, episode: EpisodeConfig) -> tuple[str, ...] | None:
    """The class each output of a model's head stands for, or None where its outputs are an
    episode's slots (meta-trained on episodes that relabel classes at random, so no output is a
    class). model.json's `classes` says it: training runs with global labels (hospital tasks)
    write it, and so does `fedmeta adapt`. A model written before they did is read through the
    scenario it names: hospital tasks keep global labels, and so does a head with one output per
    class of the scenario's label space other than its episodes' ways (supervised FedAvg trained
    with tasks='hospital' on an episodes scenario)."""
    if "classes" in info:
        named = info["classes"]
        if not (isinstance(named, list) and len(named) == model.num_classes and all(isinstance(n, str) for n in named)):
            raise ValueError(
                f"model.json's classes ({named!r}) should be {model.num_classes} names, one per head output: "
                "copy the model directory again"
            )
        return tuple(named)
    try:
        scenario = load_scenario(str(info["scenario"]))
    except (KeyError, ValueError, FileNotFoundError):
        return None  # no scenario, or one this machine does not have: nothing says the outputs are classes
    labels = scenario.label_space(scenario.sites[0])
    if not labels or len(labels) != model.num_classes:
        return None
    return labels if scenario.tasks == "hospital" or model.num_classes != episode.ways else None


def head_rows(trained: Sequence[str], site: Sequence[str]) -> list[int]:
    """For each of the site's classes, the head output trained for it, matched by name
    (`common.labels`). A class the model never learnt is refused by name."""
    rows = match_classes(trained, site)
    unknown = [name for name, row in zip(site, rows) if row is None]
    if unknown:
        raise ValueError(
            f"the site's classes {unknown} are not among the {len(trained)} classes the model's head was trained "
            f"on ({', '.join(trained)}): rename them to these names in labels.csv, or adapt a model meta-trained "
            "on episodes (which relabel classes, so it learns new ones from the support set)"
        )
    return [row for row in rows if row is not None]


def head_outputs(
    info: dict, model: ModelConfig, episode: EpisodeConfig, site: Sequence[str]
) -> tuple[list[int] | None, tuple[str, ...] | None]:
    """Which of a model's head outputs a site's classes start from, and the classes the model's
    outputs stand for: by name where the model names them (`head_classes`), else its first C (an
    episode's slots); None where the head has fewer outputs than the site has classes."""
    trained = head_classes(info, model, episode)
    if trained is not None:
        return head_rows(trained, site), trained
    return (list(range(len(site))) if len(site) <= model.num_classes else None), None


def select_head(meta: Params, rows: Sequence[int]) -> Params:
    """The head's outputs `rows`, in that order (and Meta-SGD's rates for them); the body unchanged."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return {k: v[index] if k.removeprefix(PREFIX).startswith("head.") else v for k, v in meta.items()}


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
    meta, model_cfg, meta_cfg, episode_cfg, info = load_meta_model(model_dir)
    classes = len(data.classes)
    if positive is not None and positive not in data.classes:
        raise ValueError(f"--positive {positive!r} is not one of the site's classes {list(data.classes)}")
    prototypes = REGISTRY[meta_cfg.algorithm].head_from_support  # no trained output is read: any class count
    rows, trained = ([], None) if prototypes else head_outputs(info, model_cfg, episode_cfg, data.classes)
    if rows is None:
        raise ValueError(
            f"the site has {classes} classes but the meta-model was trained on {model_cfg.num_classes}-way tasks; "
            f"meta-train with ways={classes} or more, or use a ProtoNet (one prototype per class, any number)"
        )
    if tuple(data.images.shape[1:]) != (model_cfg.in_channels, *(model_cfg.image_size,) * model_cfg.spatial_dims):
        raise ValueError(
            f"images of shape {tuple(data.images.shape[1:])} do not fit the meta-model's input "
            f"({model_cfg.in_channels} channels, {model_cfg.image_size}px, {model_cfg.spatial_dims}D)"
        )
    model_cfg = replace(model_cfg, num_classes=classes)
    algorithm = build_algorithm(build_model(model_cfg), meta_cfg, resolve_kernels(kernels)).with_rate_scale(lr_scale)
    meta = {k: v for k, v in meta.items() if not k.startswith("head.")} if prototypes else select_head(meta, rows)
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
        # the model's classes, by name; "prototypes": the support's class means
        "head_from": "prototypes" if prototypes else None if trained is None else [trained[r] for r in rows],
    }
    confusion = torch.tensor(summary["confusion"])
    curves = roc_curves(logits, truth, data.classes, summary.get("positive_class"))
    params = {k: v.detach() for k, v in adapted.items()}
    return Personalized(params, data.classes, report, confusion, model_cfg, meta_cfg, episode_cfg, curves, rest, logits)


def adaptation(report: dict) -> str:
    """How a report's model was adapted, as a title says it: "80 steps at 0.3x its inner rate"."""
    scale = report.get("adaptation_lr_scale", 1.0)
    return f"{report['adaptation_steps']} steps" + ("" if scale == 1.0 else f" at {scale:g}x its inner rate")


def head(report: dict) -> str:
    """Where the adapted head's outputs came from, as report.md and the command say it."""
    taken = report.get("head_from")
    if taken == "prototypes":
        return "the support set's class means (prototypes), one per class: no trained output is read"
    if taken is None:
        return (
            f"the model's first {len(report['per_class'])} outputs: it was meta-trained on episodes that relabel "
            "classes, so none of its outputs is a class until the support set makes it one"
        )
    return "the model's own outputs for " + ", ".join(
        name if name == taken[i] else f"{name} ({taken[i]})" for i, name in enumerate(report["per_class"])
    )


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
    (out_dir / "report.md").write_text(markdown(r, title) + f"\nHead: {head(r)}.\n")
    plot_confusion(result.confusion, result.classes, title, out_dir / "confusion_matrix.png")
    plot_roc(
        result.roc, {name: row["auc_one_vs_rest"] for name, row in r["per_class"].items()}, out_dir / "roc_curve.png"
    )
