"""The `fedmeta` command. Each subcommand parses its options into a typed config and calls one
function of the packages below; heavy imports happen inside the command that needs them."""

from __future__ import annotations

import typer

from fedmeta.commands.adapt import adapt
from fedmeta.commands.bench import bench_app
from fedmeta.commands.benchmark import benchmark_app
from fedmeta.commands.coordinator import coordinator
from fedmeta.commands.data import data_app
from fedmeta.commands.provision import provision_app
from fedmeta.commands.scenario import scenario_app
from fedmeta.commands.simulate import simulate
from fedmeta.commands.site import site

app = typer.Typer(
    help="fedmeta: federated meta-learning for hospital networks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import fedmeta

        def installed(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        parts = ", ".join(f"{name} {installed(name)}" for name in ("flwr", "torch", "monai"))
        typer.echo(f"fedmeta {fedmeta.__version__} ({parts})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print fedmeta's version (and Flower's, torch's, MONAI's) and exit.",
    ),
) -> None:
    """fedmeta: federated meta-learning for hospital networks."""


app.add_typer(bench_app, name="bench")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(data_app, name="data")
app.add_typer(scenario_app, name="scenario")
app.add_typer(provision_app, name="provision")
app.command("simulate")(simulate)
app.command("adapt")(adapt)
app.command("coordinator")(coordinator)
app.command("site")(site)


def main() -> None:
    app()
