"""`fedmeta adapt`: personalize a federation's meta-model to a site's own task from a few examples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedmeta.errors import fail

META_SETTINGS = {"steps", "lr_scale"}  # what a meta-model's own adaptation takes from tuned.json


def adapt(
    model: Path = typer.Argument(..., help="Meta-model directory (model.safetensors + model.json), e.g. RUN/model."),
    folder: Path = typer.Option(None, help="The site's labelled folder (labels.csv + images)."),
    medmnist: str = typer.Option("", help="Or a MedMNIST dataset, e.g. breastmnist (with --data-dir)."),
    split: str = typer.Option("test", help="MedMNIST split (or, with --site, the site's split) to use."),
    scenario: str = typer.Option(
        "", help="Or a scenario's site (with --site and --data-dir): its images as its client reads them."
    ),
    site: str = typer.Option(
        "", help="The --scenario site to adapt at, e.g. new-hospital-a: the classes it holds, its scanner shift."
    ),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="Directory of MedMNIST files."),
    shots: int = typer.Option(5, help="Labelled examples per class to adapt on; the rest are evaluated."),
    steps: int = typer.Option(None, help="Adaptation steps (default: the model's eval-inner-steps, or --tuned's)."),
    lr_scale: float = typer.Option(
        None, help="Adapt at this multiple of the model's inner rate (default: 1, or --tuned's); not ProtoNet."
    ),
    tuned: Path = typer.Option(
        None,
        help="A tuned.json of `fedmeta benchmark tune` (e.g. docs/results/models/SCENARIO/tuned.json): adapt with "
        "the steps and rate its validation sites chose for this method; --steps / --lr-scale override it.",
    ),
    tuned_as: str = typer.Option(
        None, help="Which method's entry of --tuned to take (default: the model's algorithm, e.g. fomaml)."
    ),
    seed: int = typer.Option(0, help="Which examples form the support set."),
    positive: str = typer.Option(
        None, help="Two classes: the finding whose sensitivity and specificity are reported (default: the second)."
    ),
    against: Path = typer.Option(
        None,
        help="The consortium's supervised FedAvg model (e.g. RUN/model): fine-tune it on the same support images "
        "(--tuned's finetune steps and lr) and report the paired difference on the same evaluated images.",
    ),
    draws: int = typer.Option(
        1, help="With --against: repeat the comparison on this many support draws (--seed, --seed + 1, ...)."
    ),
    out: Path = typer.Option(Path("personalized"), help="Where the adapted model and report go."),
    kernels: str = typer.Option(
        "auto", help="CPU norm, max-pool and ReLU: native (fedmeta's fused C kernels), torch, or auto."
    ),
) -> None:
    """Adapt a meta-model on K labelled examples per class; report accuracy, AUC and a confusion matrix."""
    from common.data import DataError
    from common.data import medmnist as mm
    from common.data.folder import FolderSpec, check_folder
    from common.data.transforms import to_model_input
    from common.export import load_meta_model
    from common.native.build import NativeKernelsUnavailable
    from common.personalize import adaptation, head, personalize, write_personalized
    from common.stats import points
    from fedmeta.progress import loading_progress

    console = Console()
    try:
        _, model_cfg, meta_cfg, _, _ = load_meta_model(model)
        settings = _read_tuned(tuned) if tuned is not None else None
        if settings is not None:
            chosen = _tuned(settings, tuned, tuned_as or meta_cfg.algorithm)
            steps = chosen.get("steps") if steps is None else steps
            lr_scale = chosen.get("lr_scale", 1.0) if lr_scale is None else lr_scale
        elif tuned_as is not None:
            raise ValueError("--tuned-as names an entry of --tuned: give the tuned.json too")
        if draws < 1 or (draws > 1 and against is None):
            raise ValueError(f"--draws {draws}: give a count >= 1, with --against (it repeats that comparison)")
        if bool(scenario) != bool(site):
            raise ValueError(
                "--scenario and --site go together: a scenario's site, e.g. --scenario new-hospital "
                "--site new-hospital-a"
            )
        if [folder is not None, bool(medmnist), bool(site)].count(True) != 1:
            raise ValueError(
                "give the site's data as one of --folder DIR, --medmnist NAME --data-dir DIR, "
                "or --scenario S --site NAME --data-dir DIR"
            )
        if site:
            data = _scenario_site(scenario, site, split, data_dir, shots)
        elif folder is not None:
            spec = FolderSpec(image_size=model_cfg.image_size, channels=model_cfg.in_channels)
            with loading_progress(console) as progress:
                data, folder_report = check_folder(folder, spec, progress)
            if data is None:
                raise DataError(str(folder), folder_report.problems)
        else:
            if data_dir is None:
                raise ValueError("--medmnist needs --data-dir (or FEDMETA_DATA_DIR)")
            raw = mm.load(medmnist, split, data_dir)
            data = replace(
                raw, images=to_model_input(raw.images, model_cfg.in_channels, model_cfg.image_size, where=medmnist)
            )
        rate = 1.0 if lr_scale is None else lr_scale
        result = personalize(model, data, shots, steps, seed, kernels, positive, rate)
        if against is not None:
            from simulation import site_compare

            finetune = _finetune(settings, tuned) if settings is not None else None
            seeds = list(range(seed, seed + draws))
            adapted = [result] + [personalize(model, data, shots, steps, s, kernels, positive, rate) for s in seeds[1:]]
            compared = [
                site_compare.against(one, against, data, shots, s, finetune, kernels) for one, s in zip(adapted, seeds)
            ]
            baseline = compared[0]
            if draws > 1:
                baseline["draws"] = site_compare.over_draws([a.report for a in adapted], compared, seeds)
    except (ValueError, FileNotFoundError, DataError, NativeKernelsUnavailable) as error:
        fail(error)
    write_personalized(out, result)
    r = result.report
    if against is not None:
        site_compare.write(out, baseline)
    table = Table(
        title=f"{shots}-shot adaptation ({r['algorithm']}, {adaptation(r)}), "
        f"evaluated on {r['evaluated']} images (95% CIs)"
    )
    for column in ("class", "cases", "sensitivity", "specificity", "PPV", "AUROC"):
        table.add_column(column)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    ci = lambda v: "" if v is None else f" ({100 * v[0]:.0f}-{100 * v[1]:.0f})"
    for name, row in r["per_class"].items():
        table.add_row(
            name,
            str(row["cases"]),
            pct(row["sensitivity"]) + ci(row["sensitivity_ci"]),
            pct(row["specificity"]) + ci(row["specificity_ci"]),
            pct(row["ppv"]),
            "n/a" if row["auc_one_vs_rest"] is None else f"{row['auc_one_vs_rest']:.3f}",
        )
    console.print(table)
    auc_ci = "" if None in r["auc_ci"] else f" ({r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})"
    auroc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}{auc_ci}"
    console.print(
        f"accuracy {pct(r['accuracy'])}{ci(r['accuracy_ci'])}, balanced accuracy {pct(r['balanced_accuracy'])}, "
        f"AUROC {auroc}"
    )
    console.print(f"head: {head(r)}")
    if against is not None:
        how, d = baseline["adaptation"], baseline["difference"]
        console.print(
            f"against FedAvg + fine-tune ({how['steps']} steps at lr {how['lr']:g}"
            f"{'' if how['tuned'] else ', untuned: give --tuned'}): accuracy {pct(baseline['accuracy'])}"
            f"{ci(baseline['accuracy_ci'])}; paired difference {points(d['mean'], d['low'], d['high'])} points "
            f"on the same {d['images']} images (report.md)"
        )
        if draws > 1:
            over = baseline["draws"]["difference"]
            difference = points(over["mean"], over["low"], over["high"])
            console.print(f"over {draws} support draws: paired difference {difference} points")
    console.print(
        f"personalized model: {out / 'model'}; report: {out / 'report.md'} (and report.json), "
        f"{out / 'confusion_matrix.png'}, {out / 'roc_curve.png'}"
    )


def _scenario_site(scenario: str, site: str, split: str, data_dir: Path | None, shots: int):
    """A scenario site's `split` as its client reads it (scanner shift included), restricted to the
    classes it holds with at least `shots` + 1 images (a held-out hospital's own problem)."""
    from common.scenario import load_scenario, load_site

    if split not in ("train", "test"):
        raise ValueError(f"--split {split!r}: a scenario site has a train and a test split")
    data = getattr(load_site(load_scenario(scenario), site, data_dir), split)
    held = data.classes_with(shots + 1)
    if not held:
        raise ValueError(f"site {site!r} holds no class with {shots + 1} images in its {split} split: lower --shots")
    return data.only(held)


def _read_tuned(path: Path) -> dict:
    """--tuned's tuned.json, read once for the meta-model's entry and --against's."""
    import json

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--tuned {path}: no such file; give the tuned.json `fedmeta benchmark tune` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"--tuned {path} is not JSON: give the tuned.json `fedmeta benchmark tune` wrote") from None


def _finetune(settings: dict, path: Path) -> dict:
    """What `fedmeta benchmark tune` chose for FedAvg + fine-tune in `settings` (`path`): steps and lr."""
    from simulation.adapters import best_settings

    if not isinstance(settings.get("finetune"), dict):
        raise ValueError(f"--tuned {path} holds no finetune entry for --against: tune FedAvg + fine-tune with it")
    return best_settings(settings, "finetune")


def _tuned(settings: dict, path: Path, name: str) -> dict:
    """The adaptation settings `fedmeta benchmark tune` chose for meta-model method `name` in
    `settings` (read from `path`)."""
    from simulation.adapters import best_settings

    entries = {n: e["best"] for n, e in settings.items() if isinstance(e, dict) and isinstance(e.get("best"), dict)}
    meta = sorted(n for n, best in entries.items() if set(best) <= META_SETTINGS)
    if name not in entries:
        raise ValueError(
            f"--tuned {path} holds no settings for {name!r}; its meta-model entries: {', '.join(meta) or 'none'} "
            "(choose one with --tuned-as)"
        )
    chosen = best_settings(settings, name)  # what `evaluate` adapts this method with
    other = sorted(set(chosen) - META_SETTINGS)
    if other:
        raise ValueError(
            f"--tuned {path}: {name!r} was tuned with {', '.join(other)}, settings of another adaptation than "
            f"a meta-model's own; adapt applies steps and lr_scale (meta-model entries: {', '.join(meta) or 'none'})"
        )
    return chosen
