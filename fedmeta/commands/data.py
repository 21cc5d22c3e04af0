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
    scenario: str = typer.Option(
        "",
        help="The consortium's scenario (built-in name or .toml): its input shape, episodes and, for global labels, "
        "its classes, which the folder's are matched to by name. Options given here win.",
    ),
    classes: str = typer.Option("", help="Comma-separated class list (default: classes.txt, else the labels found)."),
    image_size: int = typer.Option(None, help="Model input side the images are resized to (default: 28)."),
    channels: int = typer.Option(None, help="Model input channels, 1 grey or 3 RGB (default: 1)."),
    shots: int = typer.Option(None, help="Support examples per class an episode needs (default: 5)."),
    queries: int = typer.Option(None, help="Query examples per class an episode needs (default: 15)."),
) -> None:
    """Run the same validation a site runs before training and print a summary.

    Exits with status 1 when anything is wrong; every problem names its file or class and the fix."""
    from common.scenario import load_scenario
    from fedmeta.errors import fail

    console = Console()
    space: tuple[str, ...] = ()
    if scenario:
        try:
            consortium = load_scenario(scenario)
        except (ValueError, FileNotFoundError) as error:
            fail(error)
        image_size = consortium.image_size if image_size is None else image_size
        channels = consortium.channels if channels is None else channels
        shots = consortium.episode.shots if shots is None else shots
        queries = consortium.episode.queries if queries is None else queries
        space = consortium.folder_classes
    npz = [path] if path.suffix == ".npz" else sorted(path.glob("*.npz")) if path.is_dir() else []
    listed = path.is_dir() and ((path / "labels.csv").exists() or (path / "datalist.json").exists())
    if npz and not listed:
        ok = _check_medmnist(npz, console)
    else:
        per_class = (5 if shots is None else shots) + (15 if queries is None else queries)
        ok = _check_folder(path, classes, image_size or 28, channels or 1, per_class, space, console)
    raise typer.Exit(0 if ok else 1)


def _check_folder(
    path: Path, classes: str, image_size: int, channels: int, per_class: int, space: tuple[str, ...], console: Console
) -> bool:
    """The folder's report; with `space` (a consortium's classes) each class's match in it by name."""
    from common.data.folder import FolderSpec, check_folder
    from common.labels import consortium_problems

    names = tuple(c.strip() for c in classes.split(",") if c.strip()) or None
    # a check reads every file, whatever the preprocessed cache holds
    spec = FolderSpec(image_size=image_size, channels=channels, classes=names, min_per_class=per_class, cache=False)
    with loading_progress(console) as progress:
        _, report = check_folder(path, spec, progress)
    matched, mismatched = consortium_problems(space, report.classes) if space else ([], [])
    problems = [*report.problems, *mismatched]
    table = Table(title=f"{path}: {report.rows} labelled images")
    for column in ("class", "examples", "patients", *(("consortium class",) if matched else ())):
        table.add_column(column)
    for i, name in enumerate(report.classes):
        cells = [name, str(report.counts.get(name, 0)), str(report.patients.get(name, 0))]
        if matched:
            index = matched[i]
            cells.append("[red]none[/red]" if index is None else space[index])
        table.add_row(*cells)
    console.print(table)
    if report.shapes:
        shapes = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in report.shapes.most_common())
        console.print(f"image shapes (channels x spatial, after the transforms): {shapes}")
    if report.transforms:
        console.print(f"preprocessing: {report.transforms}", highlight=False)
    return _print_problems(problems, console)


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
