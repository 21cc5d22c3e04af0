"""A Flower app directory for fedmeta's apps: `pyproject.toml` naming the ServerApp and ClientApp
and holding a run's full config. It carries no code: a run submitted from it executes the fedmeta
installed where it runs. Flower's simulation engine and `flwr run` (the coordinator) both read a
run's config from such a directory."""

from __future__ import annotations

import json
from pathlib import Path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def write_app_dir(directory: Path, run_config: dict[str, object]) -> Path:
    """A minimal Flower app (name, components, full config) pointing at fedmeta's apps."""
    lines = [
        "[project]",
        'name = "fedmeta-simulation"',
        'version = "0.1.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "fedmeta"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "server.app:app"',
        'clientapp = "client.app:app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in run_config.items()),
    ]
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return directory
