"""`fedmeta adapt`: personalize a federation's meta-model to a site's own task from a few examples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedmeta.errors import fail


def adapt(
    model: Path = typer.Argument(..., help="Meta-model directory (model.safetensors + model.json), e.g. RUN/model."),
    folder: Path = typer.Option(None, help="The site's labelled folder (labels.csv + images)."),
    medmnist: str = typer.Option("", help="Or a MedMNIST dataset, e.g. breastmnist (with --data-dir)."),
    split: str = typer.Option("test", help="MedMNIST split to use."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="Directory of MedMNIST files."),
    shots: int = typer.Option(5, help="Labelled examples per class to adapt on; the rest are evaluated."),
    steps: int = typer.Option(None, help="Adaptation steps (default: the model's eval-inner-steps)."),
    seed: int = typer.Option(0, help="Which examples form the support set."),
    out: Path = typer.Option(Path("personalized"), help="Where the adapted model and report go."),
    kernels: str = typer.Option(
        "auto", help="CPU norm, max-pool and ReLU: native (fedmeta's fused C kernels), torch, or auto."
    ),
) -> None:
    """Adapt a meta-model on K labelled examples per class; report accuracy, AUC and a confusion matrix."""
    from common.data import DataError
    from common.data import medmnist as mm
    from common.data.folder import FolderSpec, load_folder
    from common.data.transforms import to_model_input
    from common.export import load_meta_model
    from common.native.build import NativeKernelsUnavailable
    from common.personalize import personalize, write_personalized

    console = Console()
    try:
        _, model_cfg, _, _, _ = load_meta_model(model)
        if (folder is None) == (not medmnist):
            raise ValueError("give the site's data as either --folder DIR or --medmnist NAME --data-dir DIR")
        if folder is not None:
            data = load_folder(folder, FolderSpec(image_size=model_cfg.image_size, channels=model_cfg.in_channels))
        else:
            if data_dir is None:
                raise ValueError("--medmnist needs --data-dir (or FEDMETA_DATA_DIR)")
            raw = mm.load(medmnist, split, data_dir)
            data = replace(
                raw, images=to_model_input(raw.images, model_cfg.in_channels, model_cfg.image_size, where=medmnist)
            )
        result = personalize(model, data, shots, steps, seed, kernels)
    except (ValueError, FileNotFoundError, DataError, NativeKernelsUnavailable) as error:
        fail(error)
    write_personalized(out, result)
    r = result.report
    table = Table(
        title=f"{shots}-shot adaptation ({r['algorithm']}, {r['adaptation_steps']} steps), "
        f"evaluated on {r['evaluated']} examples"
    )
    for column in ("accuracy", "balanced accuracy", "AUC", "loss", *(f"recall {c}" for c in result.classes)):
        table.add_column(column)
    table.add_row(
        f"{r['accuracy']:.3f} ± {r['accuracy_ci95']:.3f}",
        f"{r['balanced_accuracy']:.3f}",
        f"{r['auc']:.3f}",
        f"{r['loss']:.3f}",
        *(f"{v:.3f}" for v in r["recall_per_class"].values()),
    )
    console.print(table)
    console.print(f"personalized model: {out / 'model'}; report: {out / 'report.json'}, {out / 'confusion_matrix.png'}")
