"""Shared fixtures of the simulation tests."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

# a scenario with every role: two synthetic sites each for training, validation and held-out
SITES = """
[[sites]]
name = "{name}"
count = 2
role = "{role}"
source = "synthetic"
num-classes = 4
per-class = 8
test-per-class = 8
"""
SCENARIO = """
name = "tiny-roles"
image-size = 8
seed = 0
[episodes]
ways = 3
shots = 2
queries = 3
""" + "".join(
    SITES.format(name=n, role=r) for n, r in (("train", "train"), ("validation", "validation"), ("new", "heldout"))
)


@pytest.fixture
def scenario(tmp_path) -> str:
    """The tiny scenario's file (tests that need no MedMNIST)."""
    path = tmp_path / "tiny-roles.toml"
    path.write_text(SCENARIO)
    return str(path)


@pytest.fixture
def claimant():
    """Claims held by real processes on this machine: `claimant(path)` starts one (a `sleep`), writes
    its claim file at `path` (a `Claim`'s format) and returns it; kill and wait for it to make the
    claim stale. Every process it started is stopped after the test."""
    started: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "60"])
        started.append(process)
        path.write_text(json.dumps({"pid": process.pid, "host": socket.gethostname()}))
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()
