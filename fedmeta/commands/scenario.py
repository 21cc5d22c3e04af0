"""`fedmeta scenario`: list the built-in federations and show what each site holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedmeta.errors import fail

scenario_app = typer.Typer(help="Describe federations: sites, their data, held-out sites.", no_args_is_help=True)

DATA_DIR = typer.Option(
    None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="Directory with MedMNIST .npz files / site folders."
)


@scenario_app.command("list")
def list_() -> None:
    """Built-in scenarios and their one-line description."""
    from common.scenario import builtin_scenarios, load_scenario

    table = Table(title="built-in scenarios")
    for column in ("name", "sites (train + held out)", "description"):
        table.add_column(column)
    for name in builtin_scenarios():
        sc = load_scenario(name)
        table.add_row(name, f"{len(sc.training_sites)} + {len(sc.heldout_sites)}", sc.description)
    Console().print(table)


@scenario_app.command("show")
def show(
    name: str = typer.Argument("synthetic", help="A built-in scenario name or a path to a scenario .toml."),
    data_dir: Path = DATA_DIR,
    download: bool = typer.Option(False, help="Download missing MedMNIST files (needs network)."),
) -> None:
    """Load every site's data as its client would and print what it holds."""
    from common.data import DataError, SiteShift
    from common.data.medmnist import MedMNISTFileError
    from common.scenario import load_scenario, load_site

    console = Console()
    try:
        sc = load_scenario(name)
        sites = [load_site(sc, i, data_dir, download) for i in range(len(sc.sites))]
    except (ValueError, FileNotFoundError, DataError, MedMNISTFileError) as error:
        fail(error)
    ep = sc.episode
    console.print(
        f"[bold]{sc.name}[/bold]: {sc.description}\n{sc.spatial_dims}D, {sc.channels} channel(s), "
        f"{sc.image_size}px; episodes {ep.ways}-way {ep.shots}-shot, {ep.queries} queries; seed {sc.seed}"
    )
    if sc.labels:
        console.print(
            f"the consortium's classes, in label order (per-class counts below follow it): {', '.join(sc.labels)}"
        )
    table = Table()
    for column in ("site", "role", "data", "train per class", "test per class", "episode classes", "shift"):
        table.add_column(column)
    unshifted = SiteShift().as_dict()
    for site in sites:
        usable = site.usable_classes(ep)
        shift = ", ".join(f"{k} {v:.2g}" for k, v in site.shift.as_dict().items() if v != unshifted[k])
        table.add_row(
            site.spec.name,
            site.spec.role,
            site.spec.describe(),
            _counts(site.train),
            _counts(site.test),
            f"{len(usable)} of {len(site.train.classes)}" + ("" if len(usable) >= ep.ways else " [red](too few)[/red]"),
            shift or "none",
        )
    console.print(table)


def _counts(data) -> str:
    return " ".join(str(n) for n in data.counts().values())
