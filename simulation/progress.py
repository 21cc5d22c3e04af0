"""Where a long scoring stopped, so that the next run goes on from there.

Scoring the headline takes hours on 2 CPU cores (100 steps of fine-tuning per episode, 600
episodes per number of shots, 3 seeds), longer than one sitting. A `Progress` file keeps, per
number of shots and site, the episodes scored so far (their accuracy, AUROC and confusion counts,
per key of the scoring: one key, or one per step count when tuning `steps`). A run that finds the
file goes on at the first episode it lacks, provided the file was written by the same adapter
(its identity: kind, settings, exact model) on byte-identical episodes (the site's digest);
otherwise that part is scored again. Each episode is adapted on its own from a fixed start, so
a resumed score is the same as an unbroken one (tested).

Several `fedmeta benchmark evaluate` processes can share one scores directory (two 1-thread
processes score 1.42x to 2.05x as fast as one 2-thread process on 2 cores, docs/BENCHMARKS.md): a `Claim`
file says which process is scoring a method-seed, so another one scores the rest first and takes
that one's scores when they are written, instead of scoring it twice.

The file holds numbers only (no image, no label beyond confusion counts), like the scores it
becomes; it is written whole or not at all, at most every SAVE_EVERY seconds and when a site is done.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
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
        # for `fedmeta benchmark status`: how many episodes this run is to score per shots (`plan`),
        # and when it started from how many kept ones (its pace); not part of the match
        self._planned: dict[str, int] = {}
        self._run = {"started": time.time(), "kept": self.kept_episodes(self._parts)}

    def _read(self) -> dict[str, dict]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # cannot be half-written, but a hand edit can break it
            return {}
        return data.get("parts", {}) if data.get("identity") == self.identity else {}

    @classmethod
    def kept_episodes(cls, parts: dict[str, dict]) -> int:
        """Episodes the file's `parts` hold, over every shots and site (one key counted)."""
        return sum(cls.kept_per_shots(parts).values())

    @classmethod
    def kept_per_shots(cls, parts: dict[str, dict]) -> dict[int, int]:
        """Per number of shots, the episodes the file's `parts` hold, summed over sites (one key counted)."""
        out: dict[int, int] = {}
        for where, kept in parts.items():
            shots, _ = cls._shots_site(where)
            first: dict = next(iter(kept["keys"].values()), {})
            out[shots] = out.get(shots, 0) + len(first.get("acc", []))
        return out

    def plan(self, episodes: dict[int, int]) -> None:
        """The episodes this run scores in all, per number of shots (kept ones included)."""
        self._planned = {str(shots): n for shots, n in episodes.items()}

    @staticmethod
    def _where(shots: int, site: str) -> str:
        return f"{shots}/{site}"

    @staticmethod
    def _shots_site(where: str) -> tuple[int, str]:
        """`_where` read back."""
        shots, site = where.split("/", 1)
        return int(shots), site

    def done(self, shots: int, site: str, digest: str) -> dict[int, Part]:
        """Per key, the episodes of (`shots`, `site`) already scored: a prefix of its episodes, the
        same length for every key; empty when none were kept for these exact episodes."""
        kept = self._parts.get(self._where(shots, site))
        if not kept or kept.get("digest") != digest:
            return {}
        parts = {int(key): Part(**value) for key, value in kept["keys"].items()}
        return parts if len({len(p.acc) for p in parts.values()}) == 1 else {}

    @classmethod
    def scored(cls, path: Path) -> dict[tuple[int, str], dict[int, Part]]:
        """Everything the progress file at `path` holds, whichever adapter wrote it: per (shots,
        site), per key, the episodes scored so far (reports on a stopped scoring)."""
        progress = cls(path, json.loads(path.read_text())["identity"])
        out = {}
        for where, kept in progress._parts.items():
            shots, site = cls._shots_site(where)
            out[shots, site] = progress.done(shots, site, kept["digest"])
        return out

    def update(
        self,
        shots: int,
        site: str,
        digest: str,
        parts: dict[int, Part],
        final: bool = False,
        made_on: str | None = None,
    ) -> None:
        """Record the episodes scored so far; written when `final` (the site is done) or when the
        last write is SAVE_EVERY seconds old. `made_on`: the device type that scored them when it is
        not this adapter's (a finished part taken from another device's scores)."""
        self._parts[self._where(shots, site)] = {
            "digest": digest,
            "keys": {str(key): vars(part) for key, part in parts.items()},
            **({"made_on": made_on} if made_on else {}),
        }
        if self.path is not None and (final or time.monotonic() - self._saved >= SAVE_EVERY):
            write_json(
                self.path, {"identity": self.identity, "parts": self._parts, "planned": self._planned, "run": self._run}
            )
            self._saved = time.monotonic()

    def made_on(self, shots: int, site: str) -> str | None:
        """The device type that scored (`shots`, `site`)'s kept episodes when another than this
        adapter's did (`update`'s made_on); None when this adapter's device did, or none are kept."""
        return self._parts.get(self._where(shots, site), {}).get("made_on")


@dataclass(frozen=True)
class ScoreFiles:
    """The files one method-seed can leave in a scores directory, and the one place their names are
    made: NAME-SEED.json (its scores), NAME-SEED.progress.json (the episodes a run stopped midway or
    under way has kept), NAME-SEED.claim (the process scoring it). NAME may hold '-' itself
    (fedavg+linear-probe-0)."""

    directory: Path
    name: str
    seed: int

    SUFFIXES = (".progress.json", ".json", ".claim")  # longest first: .progress.json ends in .json too

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.seed}"

    @property
    def scores(self) -> Path:
        return self.directory / f"{self.stem}.json"

    @property
    def progress(self) -> Path:
        return self.directory / f"{self.stem}.progress.json"

    @property
    def claim(self) -> Path:
        return self.directory / f"{self.stem}.claim"

    @classmethod
    def of(cls, path: Path) -> ScoreFiles | None:
        """The method-seed whose file `path` is; None for any other file."""
        stem = next((path.name[: -len(end)] for end in cls.SUFFIXES if path.name.endswith(end)), "")
        name, sep, seed = stem.rpartition("-")
        return cls(path.parent, name, int(seed)) if sep and name and seed.isdigit() else None


class Plan:
    """What the `evaluate` runs on a scores directory are asked to score: the method-seeds (stems,
    NAME-SEED) and the episodes per number of shots, in `plan.json` beside their files, so that
    `fedmeta benchmark status` can list a method-seed no process has started yet, or one scored at
    fewer shots than asked. A run on the same episodes per shots adds its method-seeds to the plan
    (several processes share a directory, e.g. the baselines alone beside the rest); a run on other
    episodes replaces it. Read only by `status`: scoring never depends on it."""

    NAME = "plan.json"

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / self.NAME

    def read(self) -> tuple[list[str], dict[int, int]]:
        """(stems, episodes per shots); nothing for a missing or unreadable plan."""
        try:
            data = json.loads(self.path.read_text())
            return [str(s) for s in data["stems"]], {int(k): int(n) for k, n in data["episodes"].items()}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return [], {}

    def add(self, stems: list[str], episodes: Mapping[int, int]) -> None:
        had, planned = self.read()
        keep = had if planned == dict(episodes) else []
        merged = keep + [s for s in stems if s not in keep]
        write_json(self.path, {"stems": merged, "episodes": {str(k): n for k, n in sorted(episodes.items())}})


class Claim:
    """A method-seed being scored by one process: `path` holds its pid and host. Taken atomically
    (the file is created only if absent); a claim whose process is gone (same host, pid not alive)
    is stale and taken over. On another host the pid cannot be checked: the claim counts as live
    until its file is removed. Two processes taking over one stale claim at the same instant can
    both score that method-seed: work done twice, the same scores (each episode is deterministic)."""

    def __init__(self, path: Path) -> None:
        self.path, self.mine = path, {"pid": os.getpid(), "host": socket.gethostname()}

    def take(self) -> bool:
        """True when this process now holds the claim (it was free or stale)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a stale claim is removed once, then taken like a free one
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.holder() is not None:
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump(self.mine, file)
            return True
        return False

    def holder(self) -> str | None:
        """Who holds the claim, e.g. "pid 4242 on this machine"; None when free or stale."""
        try:
            data = json.loads(self.path.read_text())
            pid, host = int(data["pid"]), str(data["host"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # being written this instant, or broken
            return f"an unreadable claim {self.path.name} (remove it if no process is scoring)"
        if host != self.mine["host"]:
            return f"pid {pid} on {host} (remove {self.path} if that process is gone)"
        if pid == self.mine["pid"]:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return f"pid {pid} on this machine"

    def release(self) -> None:
        if self.path.is_file() and self.holder() is None:  # ours (or stale): never another's
            self.path.unlink(missing_ok=True)


def device_of(identity: dict | None) -> str:
    """The device type an adapter's identity names: a CPU adapter's names none (`identity_on`)."""
    return (identity or {}).get("device", "cpu")


def made_on(data: dict) -> dict[int, dict[str, str]]:
    """Per shots and site, the device type that scored a scores file's episodes (`data`: the file
    as read): its `made_on` where a part came from another device, else its identity's device."""
    own, written = device_of(data.get("identity")), data.get("made_on", {})
    return {int(k): {site: written.get(k, {}).get(site, own) for site in sites} for k, sites in data["digests"].items()}


def describe_devices(devices: Mapping[int, Mapping[str, str]]) -> str:
    """Where a method-seed's scores were made (`devices`: per shots and site, as `made_on` gives),
    for a reader: "cpu", or e.g. "cpu at 1, 5 shots; cuda at 10 shots" (a shots whose sites were
    scored on two devices reads "cpu+cuda")."""
    per_shots = {k: "+".join(sorted(set(by_site.values()))) for k, by_site in devices.items()}
    kinds = sorted(set(per_shots.values()))
    if len(kinds) <= 1:
        return kinds[0] if kinds else "cpu"
    said = []
    for device in kinds:
        counts = [str(k) for k in sorted(per_shots) if per_shots[k] == device]
        said.append(f"{device} at {', '.join(counts)} shot{'' if counts == ['1'] else 's'}")
    return "; ".join(said)
