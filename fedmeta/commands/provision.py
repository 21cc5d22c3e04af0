"""`fedmeta provision`: the consortium's CA, the coordinator's TLS certificate, site keys, bundles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedmeta.errors import fail

provision_app = typer.Typer(help="Create and manage the consortium's certificates and site keys.", no_args_is_help=True)


@provision_app.command("new")
def new(
    out: Path = typer.Option(..., help="Directory for the CA and all bundles."),
    host: list[str] = typer.Option(..., help="Host name or IP address sites use to reach the coordinator (repeat)."),
    site: list[str] = typer.Option([], help="A site's name, e.g. st-mary (repeat)."),
    port: int = typer.Option(9092, help="The coordinator's SuperNode (fleet) port."),
    force: bool = typer.Option(False, help="Replace existing bundles (new keys for everyone)."),
) -> None:
    """CA, coordinator bundle and one bundle per site; private keys 0600."""
    from deploy.provision import BundleExists, provision

    console = Console()
    try:
        manifest = provision(out, host, site, force=force, port=port)
    except (ValueError, BundleExists) as error:
        fail(error)
    console.print(f"CA: {out / 'ca'} (keep ca.key offline)\ncoordinator bundle: {out / 'coordinator'}")
    for name in manifest["sites"]:
        console.print(f"site bundle: {out / 'sites' / name}")


@provision_app.command("add-site")
def add(
    out: Path = typer.Argument(..., help="The provisioning directory."),
    name: str = typer.Argument(..., help="New site's name."),
) -> None:
    """Keys for a new site, and its public key on the coordinator's list."""
    from deploy.provision import BundleExists, add_site

    console = Console()
    try:
        bundle = add_site(out, name)
    except (ValueError, BundleExists, FileNotFoundError) as error:
        fail(error)
    console.print(
        f"site bundle: {bundle}\nthen give the coordinator the updated {out / 'coordinator' / 'authorized-sites.csv'}"
    )


@provision_app.command("revoke-site")
def revoke(
    out: Path = typer.Argument(..., help="The provisioning directory."),
    name: str = typer.Argument(..., help="Site to revoke."),
) -> None:
    """Take a site's key off the coordinator's list."""
    from deploy.provision import revoke_site

    console = Console()
    try:
        revoke_site(out, name)
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    console.print(f"{name} revoked; give the coordinator the updated {out / 'coordinator' / 'authorized-sites.csv'}")
