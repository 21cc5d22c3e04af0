"""Where a long scoring stopped, so that the next run goes on from there.

Scoring the headline takes hours on 2 CPU cores (100 steps of fine-tuning per episode, 600
episodes per number of shots, 3 seeds), longer than one sitting. A `Progress` file keeps, per
number of shots and site, the episodes scored so far (their accuracy, AUROC and confusion counts,
per key of the scoring: one key, or one per step count when tuning `steps`). A run that finds the
file goes on at the first episode it lacks, provided the file was written by the same adapter
(its identity: kind, settings, exact model) on byte-identical episodes (the site's digest);
otherwise that part is scored again. Each episode is adapted on its own from a fixed start, so
a resumed score is the same as an unbroken one (tested).

The file holds numbers only (no image, no label beyond confusion counts), like the scores it
becomes; it is written whole or not at all, at most every SAVE_EVERY seconds and when a site is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.files import write_json

SAVE_EVERY = 60.0  # seconds between writes within a site (a 100-step fine-tuning episode takes seconds)


@dataclass
class Part:
    """One site's episodes scored so far at one number of shots, for one key of the scoring."""

    acc: list[float] = field(default_factory=list)
    auc: list[float] = field(default_factory=list)
    confusion: list[int] = field(default_factory=list)  # flattened (labels * labels) counts, [] before any


class Progress:
    """The parts an interrupted scoring finished, in a file (None: keep nothing, e.g. in tests)."""

    def __init__(self, path: Path | None, identity: dict) -> None:
        self.path = path
        self.identity = json.loads(json.dumps(identity))  # as it reads back from JSON
        self._parts: dict[str, dict] = self._read()
        self._saved = time.monotonic()

    def _read(self) -> dict[str, dict]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # cannot be half-written, but a hand edit can break it
            return {}
        return data.get("parts", {}) if data.get("identity") == self.identity else {}

    @staticmethod
    def _where(shots: int, site: str) -> str:
        return f"{shots}/{site}"

    def done(self, shots: int, site: str, digest: str) -> dict[int, Part]:
        """Per key, the episodes of (`shots`, `site`) already scored: a prefix of its episodes, the
        same length for every key; empty when none were kept for these exact episodes."""
        kept = self._parts.get(self._where(shots, site))
        if not kept or kept.get("digest") != digest:
            return {}
        parts = {int(key): Part(**value) for key, value in kept["keys"].items()}
        return parts if len({len(p.acc) for p in parts.values()}) == 1 else {}

    def update(self, shots: int, site: str, digest: str, parts: dict[int, Part], final: bool = False) -> None:
        """Record the episodes scored so far; written when `final` (the site is done) or when the
        last write is SAVE_EVERY seconds old."""
        self._parts[self._where(shots, site)] = {
            "digest": digest,
            "keys": {str(key): vars(part) for key, part in parts.items()},
        }
        if self.path is not None and (final or time.monotonic() - self._saved >= SAVE_EVERY):
            write_json(self.path, {"identity": self.identity, "parts": self._parts})
            self._saved = time.monotonic()

    def remove(self) -> None:
        """Once the whole scores are written: the parts are in them."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
