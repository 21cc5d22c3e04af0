"""The run config declared in pyproject.toml parses into the dataclasses, with their defaults."""

import tomllib
from pathlib import Path

import pytest

from common.runconfig import RunConfig, flat_run_config, parse_run_config

DECLARED = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_declared_config_parses_and_matches_dataclass_defaults():
    cfg = parse_run_config(DECLARED)
    assert isinstance(cfg, RunConfig)
    assert cfg == parse_run_config({}), "pyproject defaults drifted from the dataclass defaults"
    assert cfg.model.num_classes == cfg.episode.ways


def test_overrides_are_typed():
    cfg = parse_run_config({"inner-lr": 1, "algorithm": "anil", "ways": 3})
    assert cfg.meta.inner_lr == 1.0 and cfg.meta.algorithm == "anil" and cfg.model.num_classes == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"innerlr": 0.1}, r"run-config: unknown key 'innerlr' \(did you mean 'inner-lr'\?\)"),
        ({"ways": "five"}, "ways='five': expected a int"),
        ({"algorithm": "reptile"}, "choose one of maml"),
        ({"outer-optimizer": "rmsprop"}, "choose one of adam, sgd"),
        ({"chunk-size": 0}, "chunk_size=0"),
        ({"eval-shots": "1,ten"}, "eval-shots='1,ten': give comma-separated shot counts >= 1"),
        ({"eval-shots": "0"}, "eval-shots='0'"),
        ({"train-ways": 9}, "train_ways=9 with algorithm='maml'.*train_ways is for protonet"),
        ({"algorithm": "protonet", "train-ways": 1}, "train_ways=1: give 2 or more classes"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        parse_run_config(values)


def test_flat_run_config_round_trips():
    from common.runconfig import flat_run_config, parse_overrides

    cfg = parse_run_config({"algorithm": "protonet", "ways": 2, "data-dir": "/data", "outer-lr": 0.01})
    assert parse_run_config(flat_run_config(cfg)) == cfg
    assert parse_overrides("inner-lr=0.1 algorithm='anil' seed=3") == {"inner-lr": 0.1, "algorithm": "anil", "seed": 3}
    with pytest.raises(ValueError, match="space-separated key=value"):
        parse_overrides("inner-lr=")


def test_train_ways_changes_the_training_episodes_only():
    cfg = parse_run_config({"algorithm": "protonet", "train-ways": 9})
    assert cfg.train_episode.ways == 9 and cfg.train_episode.shots == cfg.episode.shots
    assert cfg.episode.ways == cfg.model.num_classes == 5, "scored, and saved, at the episodes' ways"
    assert parse_run_config({}).train_episode == parse_run_config({}).episode


def test_eval_shots_parse_in_order_without_repeats():
    assert parse_run_config({"eval-shots": "10, 1,10"}).train.final_shots() == (10, 1)
    assert parse_run_config({}).train.final_shots() == ()


def test_pyproject_declares_exactly_the_dataclass_defaults():
    """The run config's defaults live in the dataclasses; Flower reads them from pyproject.toml,
    which must say the same (every key, every value), or `flwr run .` would train another run."""
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["tool"]["flwr"][
        "app"
    ]["config"]
    assert declared == flat_run_config(parse_run_config({}))
