"""Shared fixtures of the simulation tests."""

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
