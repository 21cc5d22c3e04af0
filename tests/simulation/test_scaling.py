"""Overhead arithmetic of the federation benchmark, and the scaling scenario it generates."""

import pytest
import torch

from common.scenario import parse_scenario
from simulation.scaling import round_costs, summarize_costs, synthetic_scenario


def test_overhead_is_wall_over_the_ideal_round():
    results = {
        "rounds": [
            {
                "round": 1,
                "seconds": 9.0,
                "bytes": {"up": 300, "down": 300},
                "train": {f"s{i}": {"compute-s": 1.0} for i in range(3)},
            },
            {
                "round": 2,
                "seconds": 2.2,
                "bytes": {"up": 330, "down": 300},
                "train": {"a": {"compute-s": 1.0}, "b": {"compute-s": 2.0}, "c": {"compute-s": 1.0}},
            },
        ]
    }
    rows = round_costs(results, cpus_per_site=1, cpus=2)
    # round 2: 4 s of compute on 2 workers -> 2 s, the slowest site also 2 s: ideal 2 s, wall 2.2 s
    assert rows[1]["ideal_s"] == 2.0 and rows[1]["overhead"] == pytest.approx(0.1)
    summary = summarize_costs(rows, model_bytes=100)
    assert summary["rounds"] == 1 and summary["up_ratio_vs_fp32_model"] == pytest.approx(1.1)


def test_synthetic_scaling_scenario_has_that_many_training_sites():
    import tomllib

    sc = parse_scenario(tomllib.loads(synthetic_scenario(100)))
    assert len(sc.training_sites) == 100 and not sc.heldout_sites


def test_half_precision_halves_the_bytes_on_the_wire():
    from flwr.app import ArrayRecord

    from server.fedmeta import FedMeta, nbytes
    from server.optimizer import OuterOptimizer

    params = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    full = nbytes(FedMeta(OuterOptimizer(params), {}, transport_dtype=torch.float32).wire(params))
    half = nbytes(FedMeta(OuterOptimizer(params), {}, transport_dtype=torch.float16).wire(params))
    model = sum(v.numel() * 4 for v in params.values())
    assert full <= 1.05 * model and half / model == pytest.approx(0.5, abs=0.02)
    assert isinstance(FedMeta(OuterOptimizer(params), {}).wire(params), ArrayRecord)
