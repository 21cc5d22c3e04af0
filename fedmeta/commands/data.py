"""`fedmeta data check`: validate a site's data before it trains, and say what to fix."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedmeta.progress import loading_progress

data_app = typer.Typer(help="Inspect and validate site data.", no_args_is_help=True)


@data_app.command("check")
def check(
    path: Path = typer.Argument(
        ...,
        help="A site folder (labels.csv or a MONAI datalist.json, images, optional transforms.toml) "
        "or a directory/file of MedMNIST .npz.",
    ),
    classes: str = typer.Option("", help="Comma-separated class list (default: classes.txt, else the labels found)."),
    image_size: int = typer.Option(28, help="Model input side the images are resized to."),
    channels: int = typer.Option(1, help="Model input channels (1 grey, 3 RGB)."),
    shots: int = typer.Option(5, help="Support examples per class an episode needs."),
    queries: int = typer.Option(15, help="Query examples per class an episode needs."),
) -> None:
    """Run the same validation a site runs before training and print a summary.

    Exits with status 1 when anything is wrong; every problem names its file or class and the fix."""
    console = Console()
    npz = [path] if path.suffix == ".npz" else sorted(path.glob("*.npz")) if path.is_dir() else []
    listed = path.is_dir() and ((path / "labels.csv").exists() or (path / "datalist.json").exists())
    if npz and not listed:
        ok = _check_medmnist(npz, console)
    else:
        ok = _check_folder(path, classes, image_size, channels, shots + queries, console)
    raise typer.Exit(0 if ok else 1)


def _check_folder(path: Path, classes: str, image_size: int, channels: int, per_class: int, console: Console) -> bool:
    from common.data.folder import FolderSpec, check_folder

    names = tuple(c.strip() for c in classes.split(",") if c.strip()) or None
    # a check reads every file, whatever the preprocessed cache holds
    spec = FolderSpec(image_size=image_size, channels=channels, classes=names, min_per_class=per_class, cache=False)
    with loading_progress(console) as progress:
        _, report = check_folder(path, spec, progress)
    table = Table(title=f"{path}: {report.rows} labelled images")
    for column in ("class", "examples", "patients"):
        table.add_column(column)
    for name in report.classes:
        table.add_row(name, str(report.counts.get(name, 0)), str(report.patients.get(name, 0)))
    console.print(table)
    if report.shapes:
        shapes = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in report.shapes.most_common())
        console.print(f"image shapes (channels x spatial, after the transforms): {shapes}")
    if report.transforms:
        console.print(f"preprocessing: {report.transforms}", highlight=False)
    return _print_problems(report.problems, console)


def _check_medmnist(paths: list[Path], console: Console) -> bool:
    import numpy as np

    from common.data import Problem, medmnist

    table = Table(title="MedMNIST files")
    for column in ("file", "dataset", "MD5", "train / val / test"):
        table.add_column(column)
    problems = []
    for path in paths:
        known = medmnist.identify(path)
        if known is None:
            problems.append(
                Problem(
                    path.name,
                    "is not an official MedMNIST file name",
                    "keep the official names, e.g. pneumoniamnist.npz",
                )
            )
            continue
        flag, size = known
        try:
            medmnist.verify(path, flag, size)
            digest = "[green]ok[/green]"
        except medmnist.MedMNISTFileError as error:
            digest = "[red]mismatch[/red]"
            problems.append(Problem(path.name, str(error), "replace the file"))
        with np.load(path) as archive:
            shapes = " / ".join(
                str(archive[f"{s}_images"].shape[0]) for s in medmnist.SPLITS if f"{s}_images" in archive
            )
        table.add_row(path.name, f"{medmnist.info(flag).name} ({size})", digest, shapes)
    console.print(table)
    return _print_problems(problems, console)


def _print_problems(problems, console: Console) -> bool:
    if not problems:
        console.print("[green]no problems found[/green]")
        return True
    console.print(f"[red]{len(problems)} problem(s):[/red]")
    for problem in problems:
        console.print(
            f"  - {problem.where}: {problem.message}\n      fix: {problem.fix}", highlight=False, soft_wrap=True
        )
    return False
