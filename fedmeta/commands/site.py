"""`fedmeta site`: a hospital's long-running site (checks, then a Flower SuperNode)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedmeta.commands.service import load_config, stop_on_sigterm
from fedmeta.errors import check_result, fail


def site(
    config: Path = typer.Option(..., "--config", help="site.toml from the site bundle."),
    check: bool = typer.Option(False, "--check", help="Only check bundle, data and device; do not connect."),
) -> None:
    """Run this hospital's site: check its data and keys, wait for the coordinator, then serve
    meta-gradients through a Flower SuperNode with TLS and the site's authentication key."""
    from deploy.config import ConfigError, load_site_config
    from deploy.processes import TLSRefused, Unreachable
    from deploy.site import SiteRefused, check_site, run_site

    console = Console()
    cfg = load_config(load_site_config, config)
    if check:
        result = check_site(cfg)
        check_result(result.problems, f"ready: {result.summary}")
        return
    stop_on_sigterm()
    try:
        run_site(cfg, echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    except KeyboardInterrupt:
        console.print("stopped")
    except ConfigError as error:
        fail(error, 1)
    except (SiteRefused, TLSRefused) as error:
        fail(error, 3)
    except Unreachable as error:
        fail(error, 4)
