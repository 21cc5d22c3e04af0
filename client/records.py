"""Typed reads of the coordinator's config values: Flower types each `ConfigRecord` value as a
union of scalars and lists; these narrow it to what a key holds, or raise `TypeError`."""

from __future__ import annotations

from flwr.app import ConfigRecord
from flwr.app.typing import ConfigScalar, ConfigScalarList


def one(config: ConfigRecord, key: str) -> ConfigScalar:
    """`config[key]`, a single value."""
    value = config[key]
    if isinstance(value, list):
        raise TypeError(f"config {key!r}: one value expected, not a list")
    return value


def many(config: ConfigRecord, key: str) -> ConfigScalarList:
    """`config[key]`, a list."""
    value = config[key]
    if not isinstance(value, list):
        raise TypeError(f"config {key!r}: a list expected, not {type(value).__name__}")
    return value


def ints(config: ConfigRecord, key: str) -> list[int]:
    """`config[key]`, a list, each item through `int`."""
    return [int(value) for value in many(config, key)]


def blobs(config: ConfigRecord, key: str) -> list[bytes]:
    """`config[key]`, a list of bytes."""
    values = many(config, key)
    out = [value for value in values if isinstance(value, bytes)]
    if len(out) != len(values):
        raise TypeError(f"config {key!r}: a list of bytes expected")
    return out
