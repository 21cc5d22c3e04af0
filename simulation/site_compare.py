"""A hospital's own evidence for the headline claim: `fedmeta adapt --against FEDAVG_MODEL`
fine-tunes the consortium's supervised FedAvg model on the same support images the meta-model
adapted on, as the benchmark's FedAvg + fine-tune does (`simulation.adapters.FineTune`, with
the steps and rate the benchmark's validation sites chose), scores both on the same held-back
images and reports the paired difference. Images are the unit of its interval: one site's
answer, not the benchmark's over many episodes and sites."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from common.backbones import build_model
from common.clinical import clinical_summary
from common.data import LabelledImages
from common.export import load_meta_model
from common.personalize import Personalized, head_outputs, select_head, split_support
from common.stats import paired_interval, points
from common.tasks import Episode
from simulation.adapters import FineTune

DEFAULTS = {"steps": 50, "lr": 1e-3}  # FineTune's own, where no tuned.json says better


def against(
    result: Personalized,
    model_dir: Path,
    data: LabelledImages,
    shots: int,
    seed: int,
    settings: dict | None,
    kernels: str = "auto",
) -> dict:
    """The supervised model `model_dir` fine-tuned on `result`'s support images (`settings`: steps
    and lr, None: untuned defaults), scored on `result`'s evaluated images, and its paired
    difference to `result` there."""
    _, model_cfg, _, episode_cfg, info = load_meta_model(model_dir)
    support, rest = split_support(data, shots, torch.Generator().manual_seed(seed))
    if not torch.equal(rest, result.evaluated):
        raise ValueError("the meta-model was scored on other images than this split: give the same --shots and --seed")
    chosen = dict(DEFAULTS if settings is None else settings)
    adapter = FineTune(model_dir, steps=int(chosen["steps"]), lr=float(chosen["lr"]), kernels=kernels, name="against")
    classes = len(data.classes)
    rows, _ = head_outputs(info, model_cfg, episode_cfg, data.classes)  # as the meta-model's (`personalize`)
    if rows is not None:  # else a head too small for the site starts from the support's class means (FineTune)
        small = build_model(replace(model_cfg, num_classes=classes))
        adapter.loaded = replace(adapter.loaded, model=small, params=select_head(adapter.loaded.params, rows))
    truth = data.labels[rest]
    episode = Episode(data.images[support], data.labels[support], data.images[rest], truth, torch.arange(classes))
    logits = adapter.logits(episode, classes)
    summary = clinical_summary(logits, truth, data.classes, seed=seed)
    meta_right, base_right = ((scores.argmax(1) == truth).double().numpy() for scores in (result.logits, logits))
    difference = paired_interval(meta_right, base_right)
    return {
        "model": str(model_dir),
        "adaptation": {"steps": adapter.steps, "lr": adapter.lr, "tuned": settings is not None},
        "accuracy": summary["accuracy"],
        "accuracy_ci": summary["accuracy_ci"],
        "balanced_accuracy": summary["balanced_accuracy"],
        "auc": summary["auc"],
        "auc_ci": summary["auc_ci"],
        "sensitivity": {name: row["sensitivity"] for name, row in summary["per_class"].items()},
        "difference": {"mean": difference.mean, "low": difference.low, "high": difference.high, "images": difference.n},
    }


def over_draws(meta: list[dict], base: list[dict], seeds: list[int]) -> dict:
    """Both models' accuracy over several support draws (one `against` each, paired within its
    draw) and the mean difference with its t-interval over draws: which images a site happens to
    label moves a few-shot result more than the images it is scored on."""
    out: dict = {"seeds": seeds}
    for measure, name in (("accuracy", "difference"), ("balanced_accuracy", "balanced_difference")):
        meta_values, base_values = [r[measure] for r in meta], [r[measure] for r in base]
        difference = paired_interval(meta_values, base_values)
        out |= {f"meta_{measure}": meta_values, f"against_{measure}": base_values}
        out[name] = {"mean": difference.mean, "low": difference.low, "high": difference.high, "draws": len(seeds)}
    out["sensitivity"] = {}  # per class: both models' mean over the draws
    for name in meta[0]["per_class"]:
        mine = _mean([r["per_class"][name]["sensitivity"] for r in meta])
        out["sensitivity"][name] = [mine, _mean([b["sensitivity"][name] for b in base])]
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def markdown(meta: dict, base: dict) -> str:
    """report.md's comparison: both models on the same images, and the paired difference."""
    ci = lambda v: f"{100 * v[0]:.1f} to {100 * v[1]:.1f}"
    auc = lambda r: "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
    how = base["adaptation"]
    tuned = "as tuned on the benchmark's validation sites" if how["tuned"] else "untuned defaults: give --tuned"
    d = base["difference"]
    return "\n".join(
        [
            "",
            "## Against FedAvg + fine-tune",
            "",
            f"The consortium's supervised FedAvg model (`{base['model']}`) fine-tuned on the same support images "
            f"({how['steps']} steps of Adam at lr {how['lr']:g}, {tuned}), scored on the same images:",
            "",
            "| model | accuracy (95% CI) | balanced accuracy | AUROC |",
            "| --- | --- | --- | --- |",
            f"| this meta-model | {_pct(meta['accuracy'])} ({ci(meta['accuracy_ci'])}) | "
            f"{_pct(meta['balanced_accuracy'])} | {auc(meta)} |",
            f"| FedAvg + fine-tune | {_pct(base['accuracy'])} ({ci(base['accuracy_ci'])}) | "
            f"{_pct(base['balanced_accuracy'])} | {auc(base)} |",
            "",
            f"Paired difference in accuracy, meta-model minus FedAvg + fine-tune, on the same {d['images']} images: "
            f"**{points(d['mean'], d['low'], d['high'])} points** (95% t-interval over images, for this support "
            "draw; the benchmark's figure pools many episodes and sites).",
            "",
            *_draws(base.get("draws")),
            *_per_class(meta, base),
        ]
    )


def _per_class(meta: dict, base: dict) -> list[str]:
    """Which classes each model recalls better: a lead on rare classes and a loss on common ones
    can cancel in accuracy (docs/FINDINGS.md, a hospital's own case mix)."""
    draws = base.get("draws")
    rows = []
    for name, row in meta["per_class"].items():
        mine, theirs = draws["sensitivity"][name] if draws else (row["sensitivity"], base["sensitivity"][name])
        gap = "n/a" if None in (mine, theirs) else f"{100 * (mine - theirs):+.1f}"
        rows.append(f"| {name} | {row['cases']} | {_pct(mine)} | {_pct(theirs)} | {gap} |")
    over = f"mean over the {len(draws['seeds'])} draws" if draws else "this draw"
    return [
        f"Sensitivity per class ({over}; cases: this draw's evaluated images of the class):",
        "",
        "| class | cases | this meta-model | FedAvg + fine-tune | difference |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def _draws(draws: dict | None) -> list[str]:
    if draws is None:
        return [
            "One support draw: `--draws 10` repeats the comparison on ten, which says how much it depends on "
            "which images were labelled.",
            "",
        ]
    d, b, mean = draws["difference"], draws["balanced_difference"], lambda values: 100 * sum(values) / len(values)
    return [
        f"Over {d['draws']} support draws (--seed {draws['seeds'][0]} to {draws['seeds'][-1]}, each model adapted "
        f"on each draw's images, each draw scored on the images it left out): accuracy, this meta-model "
        f"{mean(draws['meta_accuracy']):.1f}% and FedAvg + fine-tune {mean(draws['against_accuracy']):.1f}%, "
        f"difference **{points(d['mean'], d['low'], d['high'])} points**; balanced accuracy (every class weighted "
        f"alike, as the benchmark's class-balanced queries are) {mean(draws['meta_balanced_accuracy']):.1f}% and "
        f"{mean(draws['against_balanced_accuracy']):.1f}%, difference **{points(b['mean'], b['low'], b['high'])} "
        "points** (95% t-intervals over draws).",
        "",
    ]


def write(out_dir: Path, base: dict) -> None:
    """Add the comparison to what `write_personalized` wrote: report.json's "against" and a
    section of report.md."""
    report_json, report_md = Path(out_dir, "report.json"), Path(out_dir, "report.md")
    meta = json.loads(report_json.read_text())
    report_json.write_text(json.dumps({**meta, "against": base}, indent=1))
    report_md.write_text(report_md.read_text() + markdown(meta, base))
