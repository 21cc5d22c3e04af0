"""Editing provisioned TOML files the way an operator would: one `key = value` line at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path


def set_keys(path: Path, **values: object) -> None:
    """Set `key = value` lines of a provisioned TOML (keys written with '-' as '_'); append missing ones."""
    text = path.read_text()
    for key, value in values.items():
        key = key.replace("_", "-")
        line = f"{key} = {json.dumps(value)}"
        text, found = re.subn(rf"^{re.escape(key)}\s*=.*$", line, text, flags=re.M)
        if not found:
            text += line + "\n"
    path.write_text(text)
