"""What the two long-running commands (`fedmeta coordinator`, `fedmeta site`) share: loading their
TOML config at the edge, and stopping their children on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

from fedmeta.errors import fail


def stop_on_sigterm() -> None:
    """systemd and docker stop with SIGTERM: treat it like Ctrl-C so children are stopped."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def load_config(loader, path: Path):
    """A config file into its typed config, or exit 2 with the file and key to fix."""
    from deploy.config import ConfigError

    try:
        return loader(path)
    except ConfigError as error:
        fail(error)
